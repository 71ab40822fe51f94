"""Tasks over the one backbone: each file one task (base.py: the interface), listed in TASKS.
A dataset names its task (data/datasets.py, DatasetSpec.task); `task_of(cfg)` is the task of
the run's data.dataset. Adding a task: docs/architecture.md, section "Adding a task"."""
from __future__ import annotations

from .answer import AnswerTask
from .base import INPUTS, Task
from .grounding import GroundingTask
from .matching import MatchingTask

TASKS = {
    "answer": AnswerTask(),
    "grounding": GroundingTask(),
    "matching": MatchingTask(),
}


def task_named(name: str) -> Task:
    return TASKS[name]


def task_of(cfg) -> Task:
    """The task of cfg.data.dataset (a RunConfig)."""
    from ..data.datasets import dataset_spec
    return TASKS[dataset_spec(cfg.data.dataset).task]


__all__ = ["INPUTS", "TASKS", "Task", "task_named", "task_of"]
