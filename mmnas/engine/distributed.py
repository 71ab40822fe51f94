"""Starting one training process per device with Paddle's own distributed engine.

`--GPU=0,1` spawns one process per listed GPU (NCCL); on a CPU-only build `--NPROCS=2` runs the
same code path with 2 CPU processes over gloo. For several machines, start run.py through
`python -m paddle.distributed.launch` instead (README, "Several GPUs and machines"): each
process then finds its rank in the environment and `run_parallel` does not spawn.
"""
import os

import paddle
import paddle.distributed as dist


def launched_externally() -> bool:
    """True inside a process started by paddle.distributed.launch with more than one trainer."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def _worker(fn, cfg, use_gpu):
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_gpu:
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    return fn(cfg, rank, world)


def run_parallel(fn, cfg, nprocs: int, gpus: str = ""):
    """Run fn(cfg, rank, world) in `nprocs` processes (or in this one when nprocs == 1)."""
    use_gpu = bool(gpus)
    if launched_externally():
        return _worker(fn, cfg, use_gpu)
    if nprocs == 1:
        if use_gpu:
            paddle.set_device(f"gpu:{gpus.split(',')[0]}")
        return fn(cfg, 0, 1)
    options = {"gpus": gpus} if use_gpu else {"backend": "gloo"}
    dist.spawn(_worker, args=(fn, cfg, use_gpu), nprocs=nprocs, **options)
    return None
