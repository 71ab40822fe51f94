"""Starting one training process per device with Paddle's own distributed engine.

`--GPU=0,1` spawns one process per listed GPU (NCCL); on a CPU-only build `--NPROCS=2` runs the
same code path with 2 CPU processes over gloo. For several machines, start run.py through
`python -m paddle.distributed.launch` instead (README, "Several GPUs and machines"): each
process then finds its rank in the environment and `run_parallel` does not spawn.
"""
import os
import re
import signal
import sys

import paddle
import paddle.distributed as dist

from ..runtime import set_paddle_threads
from .interrupt import RunInterrupted


class WorkerStopped(RuntimeError):
    """A spawned process stopped on an expected error; its one-sentence message is printed above."""


def launched_externally() -> bool:
    """True inside a process started by paddle.distributed.launch with more than one trainer."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def owns_run_folder() -> bool:
    """True in the process that holds the run folder's lock: the one run.py was started as,
    or rank 0 of paddle.distributed.launch."""
    return not launched_externally() or os.environ.get("PADDLE_TRAINER_ID", "0") == "0"


_EXPECTED_EXIT = 2  # a spawned process that stopped on one of the `expected` errors
_INTERRUPTED_EXIT = 130  # a spawned process stopped by Ctrl-C (rank 0 printed the message)


def _worker(fn, cfg, use_gpu, expected=(), spawned=False):
    set_paddle_threads()  # a spawned process starts with Paddle's single OpenMP thread
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_gpu:
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    try:
        return fn(cfg, rank, world)
    except expected as e:
        if not spawned:
            raise
        # the message the single-process run would print, then a plain exit the parent recognises;
        # os._exit skips Paddle's exit handlers, which wait for the other processes (still blocked
        # in a collective) until gloo times out, so the parent can stop them at once
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(_EXPECTED_EXIT)
    except RunInterrupted as e:
        if not spawned:
            raise
        if str(e):
            print(str(e), file=sys.stderr, flush=True)
        sys.exit(_INTERRUPTED_EXIT)


def run_parallel(fn, cfg, nprocs: int, gpus: str = "", expected=()):
    """Run fn(cfg, rank, world) in `nprocs` processes (or in this one when nprocs == 1). An
    `expected` exception in a spawned process is printed there as one sentence and raised here
    as WorkerStopped; anything else keeps Paddle's traceback."""
    use_gpu = bool(gpus)
    if launched_externally():
        return _worker(fn, cfg, use_gpu, expected)
    if nprocs == 1:
        if use_gpu:
            paddle.set_device(f"gpu:{gpus.split(',')[0]}")
        return fn(cfg, 0, 1)
    options = {"gpus": gpus} if use_gpu else {"backend": "gloo"}
    context = dist.spawn(_worker, args=(fn, cfg, use_gpu, tuple(expected), True), nprocs=nprocs, join=False,
                         **options)
    try:
        while not context.join():
            pass
    except KeyboardInterrupt:
        _wait_interrupted(context.processes)
    except Exception as e:
        if re.fullmatch(rf"Process \d+ terminated with exit code {_EXPECTED_EXIT}\.", str(e).strip()):
            raise WorkerStopped("a training process stopped with the error printed above") from None
        if re.fullmatch(rf"Process \d+ terminated with exit code {_INTERRUPTED_EXIT}\.", str(e).strip()):
            raise RunInterrupted("") from None  # rank 0 printed where it stopped
        raise
    return None


def _wait_interrupted(processes) -> None:
    """Ctrl-C in the parent: pass it on (a terminal sends it to every process already; a
    `kill -INT` reaches the parent only), let every process stop on its own so rank 0 can
    print where it stopped, then raise RunInterrupted."""
    for process in processes:
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for process in processes:
        while True:
            try:
                process.join()
                break
            except KeyboardInterrupt:  # a second Ctrl-C: keep waiting (the processes stop on the first)
                pass
    if processes[0].exitcode == _INTERRUPTED_EXIT:
        raise RunInterrupted("")  # rank 0 printed where it stopped
    raise RunInterrupted("interrupted before the first epoch started; nothing was saved; run the same command again to start")
