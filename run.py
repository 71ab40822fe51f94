"""Entry point: python run.py --RUN={train,val,test} --MODEL=small --DATASET=vqa [flags]; see README."""
import sys

from mmnas.runtime import hold_stop_signals, require_packages

# Ctrl-C, SIGTERM and SIGHUP wait until the run has its handlers (mmnas/cli.py main; in a process
# spawned for --NPROCS, engine/distributed.py): held before any thread starts, they are held in
# every thread numpy and Paddle start, so they reach the main thread only
hold_stop_signals()
require_packages()  # one line naming this interpreter when Paddle etc. are not installed in it
from mmnas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
