"""Checks the task tests share (tests/test_grounding_task.py, test_matching_task.py): the same
behaviour asked of every task, written once."""
import os

import numpy as np

from mmnas.tasks import task_of


def search_one_epoch_within_budget(cfg, target_name: str, algorithm: str) -> dict:
    """Set cfg's budget just above the cheapest genotype of `target_name` (with the task's own
    head FLOPs), search one epoch, and check the report: the genotype fits, the losses are
    finite, binary_gate made architecture steps, the top-path score is a fraction."""
    from mmnas.engine.search import search
    from mmnas.search.budget import BUDGET_REGIONS, position_costs, target_model_config
    task = task_of(cfg)
    target = target_model_config(target_name)
    costs = position_costs(target, {p: cfg.search.pools(p) for p in ("enc", "dec")},
                           task.head_flops(target, cfg.data.dataset, BUDGET_REGIONS, target.max_token))
    cfg.search.budget_gflops = round(costs.cheapest_gflops() * 1.05, 6)
    summary = search(cfg, progress=False)
    report = summary["history"][-1]
    assert report["gflops"] <= cfg.search.budget_gflops
    assert np.isfinite(report["weight_loss"]) and report["weight_loss"] > 0
    if algorithm == "binary_gate":
        assert report["arch_steps"] > 0 and np.isfinite(report["arch_loss"])
    if "top_path_score" in report:
        assert 0.0 <= report["top_path_score"] <= 1.0
    assert os.path.exists(summary["genotype_path"])
    return summary
