"""Starting one training process per device with Paddle's own distributed engine.

`--GPU=0,1` spawns one process per listed GPU (NCCL); on a CPU-only build `--NPROCS=2` runs the
same code path with 2 CPU processes over gloo. For several machines, start run.py through
`python -m paddle.distributed.launch` instead (README, "Several GPUs and machines"): each
process then finds its rank in the environment and `run_parallel` does not spawn.
"""
import os
import re
import sys

import paddle
import paddle.distributed as dist

from ..runtime import set_paddle_threads


class WorkerStopped(RuntimeError):
    """A spawned process stopped on an expected error; its one-sentence message is printed above."""


def launched_externally() -> bool:
    """True inside a process started by paddle.distributed.launch with more than one trainer."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


_EXPECTED_EXIT = 2  # a spawned process that stopped on one of the `expected` errors


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
        # the message the single-process run would print, then a plain exit the parent recognises
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(_EXPECTED_EXIT)


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
    try:
        dist.spawn(_worker, args=(fn, cfg, use_gpu, tuple(expected), True), nprocs=nprocs, **options)
    except Exception as e:
        if re.fullmatch(rf"Process \d+ terminated with exit code {_EXPECTED_EXIT}\.", str(e).strip()):
            raise WorkerStopped("a training process stopped with the error printed above") from None
        raise
    return None
