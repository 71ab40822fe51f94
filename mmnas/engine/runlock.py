"""One run at a time per run folder: `ckpt/ckpt_<VERSION>/` and its log belong to the run
that holds their lock.

The lock is `fcntl.flock` on a small file beside what it guards; the file holds the owner's
pid, host, start time and command, so a refused run can say who is running. The kernel drops
a flock when its process dies, so a killed run (even SIGKILL) leaves no stuck lock. Only the
process that starts the run takes it (the parent of data-parallel processes, or rank 0 under
paddle.distributed.launch); the processes it spawns never touch it.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
from typing import List, Optional

from ..checkpoint_files import write_error


class RunBusyError(RuntimeError):
    """Another live run owns the run folder; the message names it."""


class EarlierRunError(RuntimeError):
    """The run folder holds an earlier run's checkpoints and the command does not say what to do
    with them; the message gives the choices."""


def current_command() -> str:
    return shlex.join([os.path.basename(sys.executable)] + sys.argv)


class RunFolderLock:
    """An exclusive, non-blocking lock on `lock_path`, guarding `what` (for messages)."""

    def __init__(self, lock_path: str, what: str, flag: str):
        self.lock_path, self.what, self.flag = lock_path, what, flag
        self.fd: Optional[int] = None

    def acquire(self) -> "RunFolderLock":
        folder = os.path.dirname(os.path.abspath(self.lock_path))
        while True:
            try:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # a run releasing its lock removed the folder just now: make it again
            except OSError as e:
                raise write_error(self.lock_path, e, self.flag) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunBusyError(f"{self.what} is in use by another run ({owner}); wait for it to "
                                   f"finish or stop it, or choose another --VERSION") from None
            # the holder before us may have removed the file on release: lock the file at the path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": current_command()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        except OSError as e:
            self.release()
            raise write_error(self.lock_path, e, self.flag) from None
        return self

    def release(self) -> None:
        """Remove the file while still holding the lock, then drop it (acquire re-checks the
        path); a folder left empty goes too, so a run refused before it wrote anything leaves
        no empty run folder behind."""
        if self.fd is None:
            return
        try:
            os.remove(self.lock_path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        try:
            os.rmdir(os.path.dirname(os.path.abspath(self.lock_path)))
        except OSError:
            pass  # not empty (the run's files), or already gone


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}, command: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def run_folder_locks(ckpt_dir: str, results_dir: str, version: str) -> List[RunFolderLock]:
    """The locks of one run: its checkpoint folder and its log (both named by VERSION)."""
    return [RunFolderLock(os.path.join(ckpt_dir, f"ckpt_{version}", ".run.lock"),
                          f"the run folder {os.path.join(ckpt_dir, f'ckpt_{version}')}", "--CKPT_DIR"),
            RunFolderLock(os.path.join(results_dir, "log", f".log_run_{version}.lock"),
                          f"the log {os.path.join(results_dir, 'log', f'log_run_{version}.txt')}",
                          "--RESULTS_DIR")]


_EPOCH_FILE = re.compile(r"epoch(\d+)\.(pdparams|pdopt)$")


def claim_run_folder(ckpt_dir: str, results_dir: str, version: str, *, run: str, resume_version: Optional[str],
                     overwrite: bool, weights: Optional[str] = None) -> List[str]:
    """A run never writes its epochs beside the checkpoints of an earlier run of the same
    VERSION (the folder would mix two runs): refused (EarlierRunError) unless the run continues
    that VERSION (--RESUME=True --CKPT_V=VERSION) or --OVERWRITE=True, which removes the earlier
    run's checkpoints, vocab.json and search reports first (never `weights`, the --CKPT_PATH
    the run starts from). Called by the lock's holder. Returns the notes to print."""
    folder = os.path.join(ckpt_dir, f"ckpt_{version}")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    epochs = sorted({int(m.group(1)) for m in map(_EPOCH_FILE.match, names) if m})
    if not epochs or resume_version == version:
        return []
    listed = (f"epochs {epochs[0]} to {epochs[-1]}" if len(epochs) > 2 and epochs == list(range(epochs[0], epochs[-1] + 1))
              else f"epoch{'s' if len(epochs) > 1 else ''} " + ", ".join(map(str, epochs)))
    if not overwrite:
        complete = [e for e in epochs if {f"epoch{e}.pdparams", f"epoch{e}.pdopt"} <= set(names)]
        resume = f"continue it with --RESUME=True --CKPT_V={version} --CKPT_E={complete[-1]}, " if complete else ""
        raise EarlierRunError(f"{folder} already holds the checkpoints of an earlier run ({listed}); "
                              f"{resume}replace them with --OVERWRITE=True, or choose another --VERSION")
    reports = os.path.join(results_dir, "search", version)
    removed = [os.path.join(folder, n) for n in names if _EPOCH_FILE.match(n) or n == "vocab.json"]
    if weights and any(os.path.exists(p) and os.path.samefile(weights, p) for p in removed):
        raise EarlierRunError(f"--CKPT_PATH={weights} is one of the files --OVERWRITE=True would remove from "
                              f"{folder}; copy it elsewhere first, or choose another --VERSION")
    if run == "search" and os.path.isdir(reports):
        removed += [os.path.join(reports, n) for n in os.listdir(reports) if re.fullmatch(r"epoch\d+\.(json|png)", n)]
    for path in removed:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise write_error(path, e, "--CKPT_DIR" if path.startswith(folder) else "--RESULTS_DIR") from None
    return [f"note: --OVERWRITE=True: removed the earlier run's {listed} from {folder}"]


class RunOwnership:
    """Context manager holding every lock of a run (all or none)."""

    def __init__(self, ckpt_dir: str, results_dir: str, version: str):
        self.locks = run_folder_locks(ckpt_dir, results_dir, version)

    def __enter__(self):
        taken = []
        try:
            for lock in self.locks:
                taken.append(lock.acquire())
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(self, *exc):
        for lock in reversed(self.locks):
            lock.release()
        return False
