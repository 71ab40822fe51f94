"""Ctrl-C during a run: stop at once, keep the last complete checkpoint, say how to resume.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be, and Paddle
re-raises it from inside backward (a PyLayer's Python backward called from C++) as an OSError
with a long report. So the run installs its own handler: it records that Ctrl-C was pressed,
then raises KeyboardInterrupt; the run's top level treats *any* exception that follows a
recorded Ctrl-C as the interrupt and prints one line. While a checkpoint is being written the
handler only records, and the interrupt takes effect once both files are complete.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message (empty on ranks other than 0) is the one line to print."""


class InterruptGuard:
    """SIGINT handler of a run (main thread only; a SIGINT ignored by the parent stays ignored).

    Data parallel (`world` > 1): a process that stopped alone would leave the others waiting in
    a gradient all-reduce, so Ctrl-C only records, and `stop_together` (called by every process
    before every step) stops all processes at the same step once any of them saw it."""

    def __init__(self, world: int = 1):
        self.world = world
        self.requested = False
        self._deferred = 0
        self._previous = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
        return False

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C while the first is being handled
            return
        self.requested = True
        if not self._deferred and self.world == 1:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Ctrl-C inside this block takes effect when the block ends (used around checkpoint writes)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        if self.requested and not self._deferred and self.world == 1:
            raise KeyboardInterrupt

    def stop_together(self) -> None:
        """Data parallel: raise KeyboardInterrupt in every process once any process saw Ctrl-C
        (one small all-reduce per step); nothing to do in a single process."""
        if self.world == 1:
            return
        import paddle
        import paddle.distributed as dist
        flag = paddle.to_tensor([1 if self.requested else 0], dtype="int32")
        dist.all_reduce(flag)
        if int(flag.numpy().reshape(-1)[0]):
            self.requested = True
            raise KeyboardInterrupt

    def caused(self, error: BaseException) -> bool:
        """True if `error` is (or was caused by) Ctrl-C."""
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
