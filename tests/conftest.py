"""Shared test helpers: the golden folder beside the repository, and quiet, seeded Paddle."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SHARED = os.path.join(REPO, "..", "shared")
GOLDEN_DIR = os.path.join(SHARED, "golden")
SPEC_DIR = os.path.join(SHARED, "spec")


@pytest.fixture
def golden_dir():
    if not os.path.isdir(GOLDEN_DIR):
        pytest.skip(f"golden vectors not found at {GOLDEN_DIR}")
    return GOLDEN_DIR


@pytest.fixture
def spec_dir():
    if not os.path.isdir(SPEC_DIR):
        pytest.skip(f"spec not found at {SPEC_DIR}")
    return SPEC_DIR
