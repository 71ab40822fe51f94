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


def fine_tune_takes_the_backbone(cfg, tmp_path, capsys, shared_keys) -> None:
    """A VQA checkpoint of another vocabulary loaded into the task's model (--CKPT_PATH): the
    `shared_keys` backbone tensors are the VQA model's, the head stays as initialised, and the
    report names what it took and what it initialised (the embedding, the head)."""
    import paddle

    from mmnas.engine.checkpoint import load_pretrained
    from mmnas.engine.runner import open_vocab
    from mmnas.models import MMNasNet
    paddle.seed(1)
    vqa = MMNasNet(cfg.model, 50, 7)  # another vocabulary: the embedding does not fit
    path = str(tmp_path / "vqa.pdparams")
    paddle.save(vqa.state_dict(), path)
    task = task_of(cfg)
    paddle.seed(2)
    model = task.build_model(cfg.model, open_vocab(cfg, False))
    head_before = {k: v.numpy().copy() for k, v in model.state_dict().items() if k.startswith("head.")}
    load_pretrained(model, path, task)
    out = capsys.readouterr().out
    state, vqa_state = model.state_dict(), vqa.state_dict()
    for key in shared_keys:
        np.testing.assert_array_equal(state[key].numpy(), vqa_state[key].numpy())
    for key, value in head_before.items():
        np.testing.assert_array_equal(state[key].numpy(), value)  # fresh head, untouched
    assert "took" in out and "initialised" in out and "embedding.weight" in out and "head." in out
