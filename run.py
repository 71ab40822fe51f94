"""Entry point: python run.py --RUN={train,val,test} --MODEL=small --DATASET=vqa [flags]; see README."""
import sys

from mmnas.runtime import require_packages

require_packages()  # one line naming this interpreter when Paddle etc. are not installed in it
from mmnas.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
