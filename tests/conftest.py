"""Shared test helpers: the golden vectors and spec key lists kept in tests/golden/ (copies of the
project's reference outputs, so that a fresh clone runs every fidelity test), and quiet, seeded Paddle."""
import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmnas import runtime  # noqa: E402

# One thread per process in every test, in this process and in the run.py subprocesses it starts
# (they inherit it as a user setting): a GEMM sums in an order that depends on its thread count,
# and the tests compare runs made in different ways (in-process and run.py, one process and
# --NPROCS=2 sharing the cores, whole batches and box-count pieces) to 1e-5. Set before anything
# runs Paddle, and kept by the tests that call cli.main in this process.
os.environ.setdefault("MKL_NUM_THREADS", "1")
runtime.configure()

# The tests never reach the internet: no usage reports from Gradio or its client (a machine whose
# network drops packets would keep a thread of this process waiting on them).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def signals_as_pytest_had_them():
    """A test that runs cli.main or the web demo in this process installs their handlers of
    SIGTERM and SIGHUP (and holds the stop signals for a moment); put pytest's own back after it,
    so that every later test, and every process it starts, begins as under a plain pytest."""
    handlers = {signum: signal.getsignal(signum) for signum in runtime.STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    for signum, handler in handlers.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)

GOLDEN_DIR = os.path.join(REPO, "tests", "golden")
SPEC_DIR = os.path.join(GOLDEN_DIR, "spec")


@pytest.fixture
def golden_dir():
    return GOLDEN_DIR


@pytest.fixture
def spec_dir():
    return SPEC_DIR


@pytest.fixture
def mount_tmpfs():
    """mount(size, read_only) -> a fresh tmpfs folder; skipped where mounting is not allowed."""
    mounted = []

    def mount(folder, size, read_only=False):
        os.makedirs(folder, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root in a mount namespace): {proc.stderr.strip()}")
        mounted.append(str(folder))
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", folder], capture_output=True)
