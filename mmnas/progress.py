"""The project's one way to make a progress bar (tqdm), readable in a terminal and in a log file.

In a terminal a bar redraws itself in place ("\\r"). Written to a file or a pipe (nohup, CI,
`> log.txt 2>&1`), those redraws would pile up into one line thousands of characters long;
there the bar instead writes a plain line every `LOG_STEP_PERCENT` percent (or every
`LOG_INTERVAL_S` seconds when the total is unknown), without the bar graphic, and at most one
line per `LOG_MIN_INTERVAL_S`. Either way a bar shows only once its work has taken
`SHOW_AFTER_S` seconds: work done sooner (a small vocabulary, a small split) prints nothing.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm

LOG_STEP_PERCENT = 5  # one line per this much of the total when not writing to a terminal
LOG_INTERVAL_S = 30.0  # ... or per this many seconds when the total is unknown
LOG_MIN_INTERVAL_S = 1.0  # and never more often than this
SHOW_AFTER_S = 1.0  # no bar at all for work done within this many seconds
_LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _LinePerUpdate:
    """A file for tqdm that turns each in-place redraw ("\\r" + status) into one line."""

    def __init__(self, stream):
        self.stream = stream
        self.last_count = None  # the status before its "[elapsed...]" part, to skip repeats

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]
        if line and count != self.last_count:  # close() redraws the final count once more
            self.stream.write(line + "\n")
            self.last_count = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, file=None, **kwargs) -> tqdm:
    """tqdm(iterable, total=..., **kwargs), writing to `file` (default: sys.stderr at call time).

    To a terminal: a normal bar (mininterval 1 s unless given). Otherwise: a line per
    LOG_STEP_PERCENT percent of `total` (per LOG_INTERVAL_S seconds without a total), at most
    one per LOG_MIN_INTERVAL_S. Nothing before SHOW_AFTER_S seconds (unless `delay` is given).
    """
    stream = sys.stderr if file is None else file
    kwargs.setdefault("delay", SHOW_AFTER_S)
    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    if is_terminal(stream):
        kwargs.setdefault("mininterval", 1.0)
        return tqdm(iterable, total=total, file=stream, **kwargs)
    for name in ("dynamic_ncols", "ncols", "mininterval", "miniters", "maxinterval"):
        kwargs.pop(name, None)
    # maxinterval inf: tqdm's monitor thread would otherwise drop miniters to 1 after any 10 s
    # without a line (slow training steps), and every step would write a line again
    kwargs["maxinterval"] = float("inf")
    if total:
        every = max(1, -(-total * LOG_STEP_PERCENT // 100))  # ceil: at most 100 / LOG_STEP_PERCENT lines
        kwargs.update(miniters=every, mininterval=LOG_MIN_INTERVAL_S, bar_format=_LOG_FORMAT)
    else:
        kwargs.update(miniters=1, mininterval=LOG_INTERVAL_S, bar_format=_LOG_FORMAT_NO_TOTAL)
    return tqdm(iterable, total=total, file=_LinePerUpdate(stream), **kwargs)
