"""Shared test helpers: the golden vectors and spec key lists kept in tests/golden/ (copies of the
project's reference outputs, so that a fresh clone runs every fidelity test), and quiet, seeded Paddle."""
import os
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

GOLDEN_DIR = os.path.join(REPO, "tests", "golden")
SPEC_DIR = os.path.join(GOLDEN_DIR, "spec")


@pytest.fixture
def golden_dir():
    return GOLDEN_DIR


@pytest.fixture
def spec_dir():
    return SPEC_DIR
