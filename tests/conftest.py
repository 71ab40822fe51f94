"""Shared test helpers: the golden vectors and spec key lists kept in tests/golden/ (copies of the
project's reference outputs, so that a fresh clone runs every fidelity test), and quiet, seeded Paddle."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

GOLDEN_DIR = os.path.join(REPO, "tests", "golden")
SPEC_DIR = os.path.join(GOLDEN_DIR, "spec")


@pytest.fixture
def golden_dir():
    return GOLDEN_DIR


@pytest.fixture
def spec_dir():
    return SPEC_DIR
