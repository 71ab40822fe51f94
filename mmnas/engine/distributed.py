"""Starting one training process per device with Paddle's own distributed engine.

`--GPU=0,1` spawns one process per listed GPU (NCCL); on a CPU-only build `--NPROCS=2` runs the
same code path with 2 CPU processes over gloo. For several machines, start run.py through
`python -m paddle.distributed.launch` instead (docs/training.md, section "Several GPUs and machines"): each
process then finds its rank in the environment and `run_parallel` does not spawn.

Stopping: a signal to run.py (Ctrl-C, SIGTERM, SIGHUP), to its process group or to one process
stops every process of the run at the same step; rank 0 prints the one line. A process whose
parent died (kill -9, or paddle.distributed.launch killed) notices within a second and stops the
same way. A process that stops on an expected error leaves its message to the parent, which
prints each different message once (processes that refuse the same thing say it once); the
others, whose next all-reduce fails at once, leave without a word; the parent kills any process
still running STOP_GRACE seconds after a signal or an error (one blocked for good in a collective).
"""
import logging
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import threading
import time

import paddle
import paddle.distributed as dist

from ..checkpoint_files import write_text_atomic
from ..runtime import STOP_SIGNALS, paddle_log_filtered, release_stop_signals, set_paddle_threads
from .checkpoint import ckpt_paths
from .interrupt import (InterruptGuard, RunInterrupted, exit_status, interrupted_by, not_started_message,
                        signal_of, stop_on_signals)


class WorkerStopped(RuntimeError):
    """A spawned process stopped on an expected error; the message is its one sentence (or the
    different sentences of several processes, a line each)."""


def launched_externally() -> bool:
    """True inside a process started by paddle.distributed.launch with more than one trainer."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def owns_run_folder() -> bool:
    """True in the process that holds the run folder's lock: the one run.py was started as,
    or rank 0 of paddle.distributed.launch."""
    return not launched_externally() or os.environ.get("PADDLE_TRAINER_ID", "0") == "0"


_EXPECTED_EXIT = 2  # a spawned process stopped on one of the `expected` errors (its message: the errors folder)
# a spawned process stopped by a signal exits with exit_status(signal) (rank 0 printed where it stopped)
STOP_GRACE = 60.0  # seconds the parent waits for its processes after a signal or an error, then kills them
ORPHAN_GRACE = 30.0  # seconds a process whose parent died has to stop on its own before it exits anyway


def watch_parent(parent_pid: int) -> None:
    """Stop this process as on SIGTERM once `parent_pid` is no longer its parent (it died, even by
    kill -9); exit without a word ORPHAN_GRACE seconds later if it is still running (blocked in a
    collective whose peer is gone). A daemon thread polling twice a second."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE)
        os._exit(exit_status(signal.SIGTERM))
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _worker(fn, cfg, use_gpu, expected=(), parent_pid=None, errors_dir=None):
    """One process of the run; `parent_pid`: run.py's process when spawned by it (None when
    started by paddle.distributed.launch, whose process is then the parent watched), and
    `errors_dir` the folder where it leaves the message of an expected error."""
    spawned = parent_pid is not None
    stop_on_signals()  # Paddle, imported with this module, installed its C++ SIGTERM handler
    watch_parent(parent_pid if spawned else os.getppid())
    set_paddle_threads()  # a spawned process starts with Paddle's single OpenMP thread
    try:
        release_stop_signals()  # held since run.py's first line (run as __mp_main__ when spawned)
        with paddle_log_filtered():  # its "Modified FLAGS" frame and the rendezvous's glog lines
            dist.init_parallel_env()
        rank, world = dist.get_rank(), dist.get_world_size()
        if use_gpu:
            paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
        return fn(cfg, rank, world)
    except expected as e:
        if not spawned:
            raise
        # the message the single-process run would print, for the parent to print once, then an
        # exit status it recognises; a normal exit releases the loader's semaphores, and the other
        # processes, whose next collective fails at once, leave without a word (_supervise)
        write_text_atomic(str(e), os.path.join(errors_dir, f"{os.environ.get('PADDLE_TRAINER_ID', '0')}.txt"))
        sys.exit(_EXPECTED_EXIT)
    except KeyboardInterrupt as e:  # RunInterrupted, or a signal before the run started
        if not spawned:
            raise
        for signum in STOP_SIGNALS:  # a repeat (SIGTERM to the group, then passed on by the parent)
            signal.signal(signum, signal.SIG_IGN)  # must not cut the line that says where the run stopped
        message = str(e) if isinstance(e, RunInterrupted) else (
            not_started_message(signal_of(e)) if os.environ.get("PADDLE_TRAINER_ID") == "0" else "")
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.exit(exit_status(signal_of(e)))


def run_parallel(fn, cfg, nprocs: int, gpus: str = "", expected=()):
    """Run fn(cfg, rank, world) in `nprocs` processes (or in this one when nprocs == 1). An
    `expected` exception in spawned processes is raised here as WorkerStopped with its one
    sentence (once, however many processes raised it); anything else keeps its traceback."""
    use_gpu = bool(gpus)
    if launched_externally():
        return _worker(fn, cfg, use_gpu, expected)
    if nprocs == 1:
        if use_gpu:
            paddle.set_device(f"gpu:{gpus.split(',')[0]}")
        return fn(cfg, 0, 1)
    options = {"gpus": gpus} if use_gpu else {"backend": "gloo"}
    with tempfile.TemporaryDirectory(prefix="mmnas_errors_") as errors_dir, \
            InterruptGuard(world=nprocs) as guard:  # records a signal to this process, never raises
        root_logger = logging.getLogger()  # Paddle's launch utilities make it log INFO ("find free ports")
        level = root_logger.level
        root_logger.setLevel(logging.WARNING)
        try:
            context = dist.spawn(_worker, args=(fn, cfg, use_gpu, tuple(expected), os.getpid(), errors_dir),
                                 nprocs=nprocs, join=False, **options)
        finally:
            root_logger.setLevel(level)
        _supervise(context, guard, cfg, errors_dir)
    return None


def _supervise(context, guard: InterruptGuard, cfg, errors_dir: str) -> None:
    """Wait for the spawned processes. A signal to this process (recorded by `guard`) is passed
    on to each; once a signal came or a process failed, any process still running STOP_GRACE
    seconds later is killed. Then: WorkerStopped if a process stopped on an expected error (with
    the messages left in `errors_dir`), RunInterrupted if they stopped on a signal (rank 0
    printed where), else the first failure's traceback."""
    processes = context.processes
    deadline, passed_on = None, False
    failed = []  # indices of the processes that ended with a non-zero status, first first
    while True:
        alive = [p for p in processes if p.exitcode is None]
        if not alive:
            break
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=0.5)
        ended = [i for i, p in enumerate(processes) if p.exitcode and i not in failed]
        failed += sorted(ended, key=lambda i: processes[i].exitcode >= 0)  # killed first: the others followed
        if guard.requested and not passed_on:
            for p in alive:
                _send(p, guard.signum)  # a terminal's Ctrl-C reached them already; `kill -TERM <run.py>` did not
            passed_on = True
        if deadline is None and (guard.requested or failed):
            deadline = time.time() + STOP_GRACE
        if deadline is not None and time.time() > deadline:
            for p in alive:
                p.kill()
                p.join()
    codes = [p.exitcode for p in processes]
    if _EXPECTED_EXIT in codes:
        raise WorkerStopped(_expected_messages(errors_dir, len(processes)))
    stopped_by = [code - 128 for code in codes if code and code - 128 in STOP_SIGNALS]
    if guard.requested or stopped_by:
        signum = guard.signum if guard.requested else stopped_by[0]
        if codes[0] == exit_status(signum):
            raise RunInterrupted("", signum)  # rank 0 printed where it stopped
        last = ckpt_paths(cfg.ckpt_dir, cfg.version, cfg.train.max_epoch)[0] if cfg.run in ("train", "search") else ""
        if last and os.path.exists(last):  # the signal came as the processes ended, after the last epoch's save
            raise RunInterrupted(f"{interrupted_by(signum)} at epoch {cfg.train.max_epoch} (finished); nothing "
                                 f"partial was saved; every epoch is saved, the last in {last}; nothing is left "
                                 f"to {cfg.run}", signum)
        raise RunInterrupted(f"{interrupted_by(signum)}; the training processes stopped before saying where; the "
                             f"complete checkpoints are in {os.path.join(cfg.ckpt_dir, f'ckpt_{cfg.version}')}",
                             signum)
    failed += [i for i, code in enumerate(codes) if code and i not in failed]  # killed after the deadline
    if failed:  # the first to fail is the cause: the others' collectives failed after it
        index, code = failed[0], codes[failed[0]]
        queue = context.error_queues[index]
        if not queue.empty():
            raise RuntimeError(f"training process {index} failed:\n{queue.get()}")
        how = f"by {signal.Signals(-code).name}" if code < 0 else f"with exit status {code}"
        raise WorkerStopped(f"training process {index} ended {how}; the complete checkpoints are in "
                            f"{os.path.join(cfg.ckpt_dir, f'ckpt_{cfg.version}')}")


def _expected_messages(errors_dir: str, nprocs: int) -> str:
    """The different messages the processes stopped on, in process order, joined as lines of
    "error: ..." (the first line's "error: " is the caller's)."""
    messages = []
    for index in range(nprocs):
        try:
            with open(os.path.join(errors_dir, f"{index}.txt"), encoding="utf-8") as f:
                message = f.read()
        except FileNotFoundError:
            continue
        if message not in messages:
            messages.append(message)
    return "\nerror: ".join(messages) or "a training process stopped on an error it could not report"


def _send(process, signum) -> None:
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass
