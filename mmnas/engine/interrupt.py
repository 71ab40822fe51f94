"""Ctrl-C, SIGTERM and SIGHUP during a run: stop at once, keep the last complete checkpoint, say
how to resume.

A scheduler's preemption, `timeout` or `scancel` sends SIGTERM, a dropped ssh session SIGHUP;
both are handled as Ctrl-C (SIGINT) is, and the run exits with 128 + the signal's number (130,
143, 129), as a shell reports a process the signal killed.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be, and Paddle
re-raises it from inside backward (a PyLayer's Python backward called from C++) as an OSError
with a long report. Importing Paddle also installs a C++ handler for SIGTERM that prints a C++
traceback ("Termination signal") and kills the process. So run.py holds the three signals from
its first line (runtime.hold_stop_signals: every thread numpy and Paddle start holds them too),
the command line replaces Paddle's handler after the import (`stop_on_signals`) and only then
releases them. A run installs its own handler (`InterruptGuard`): it records which signal came,
then raises KeyboardInterrupt; the run's top level treats *any* exception that follows a
recorded signal as the interrupt and prints one line. While a checkpoint is being written the
handler only records, and the interrupt takes effect once both files are complete. A signal
whose handler the parent set to "ignore" (`nohup` ignores SIGHUP) stays ignored.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..runtime import STOP_SIGNALS


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by `signum`: 128 + its number, as a shell reports it."""
    return 128 + int(signum)


def interrupted_by(signum: int) -> str:
    """How the one line starts: "interrupted" for Ctrl-C, "interrupted by SIGTERM" for the others."""
    return "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"


def not_started_message(signum: int) -> str:
    """The one line when a train or search run stopped before its first epoch."""
    return (f"{interrupted_by(signum)} before the first epoch started; nothing was saved; run the same command "
            f"again to start")


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped the run; the message (empty on ranks other than 0) is the one line to print."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a run's InterruptGuard (start-up, --RUN=val/test/predict, the demo)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(error: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for Python's own)."""
    return getattr(error, "signum", signal.SIGINT)


def _raise_stop_signal(signum, frame):
    raise StopSignal(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (a StopSignal naming the signal), as SIGINT
    does. Called once Paddle is imported (its C++ SIGTERM handler is replaced), in the main
    thread; a signal set to "ignore" stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGINT raises KeyboardInterrupt already
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_stop_signal)


class InterruptGuard:
    """The handler of SIGINT, SIGTERM and SIGHUP during a run (main thread only).

    Data parallel (`world` > 1): a process that stopped alone would leave the others waiting in
    a gradient all-reduce, so a signal only records, and `stop_together` (called by every process
    before every step) stops all processes at the same step once any of them saw one."""

    def __init__(self, world: int = 1):
        self.world = world
        self.requested = False
        self.signum = signal.SIGINT  # the first signal that came (valid once `requested`)
        self._deferred = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.requested:  # a second signal while the first is being handled
            return
        self.requested, self.signum = True, signum
        if not self._deferred and self.world == 1:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """A signal inside this block takes effect when the block ends (used around checkpoint writes)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        if self.requested and not self._deferred and self.world == 1:
            raise KeyboardInterrupt

    def stop_together(self) -> None:
        """Data parallel: raise KeyboardInterrupt in every process once any process saw a signal
        (one small all-reduce per step); nothing to do in a single process."""
        if self.world == 1:
            return
        import paddle
        import paddle.distributed as dist
        flag = paddle.to_tensor([int(self.signum) if self.requested else 0], dtype="int32")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.numpy().reshape(-1)[0])
        if signum:
            self.requested, self.signum = True, signum  # a process that saw none reports the others'
            raise KeyboardInterrupt

    def caused(self, error: BaseException) -> bool:
        """True if `error` is (or was caused by) a stop signal."""
        return isinstance(error, KeyboardInterrupt) or self.requested


@dataclass
class RunPosition:
    """Where a run is, for the Ctrl-C message; the training loops keep it current."""
    guard: InterruptGuard = field(default_factory=InterruptGuard)
    epoch: int = -1  # epoch in progress, counted from 0; -1 before the first
    step: int = 0  # step in progress within the epoch, counted from 1
    phase: str = ""  # "" (training steps), or what runs after the steps (saving, evaluating)
    last_ckpt: Optional[Tuple[str, int]] = None  # (version, epoch) of the last complete checkpoint

    def where(self) -> str:
        if self.epoch < 0:
            return "before the first epoch started"
        if self.phase:
            return f"at epoch {self.epoch + 1} ({self.phase})"
        return f"at epoch {self.epoch + 1} step {max(self.step, 1)}"
