"""The task table (mmnas/tasks/): which task a dataset runs, the batch plumbing every task shares,
and the head FLOPs the search budget counts per task (by hand)."""
import numpy as np

from mmnas.config import load_config
from mmnas.models.flops import forward_gflops
from mmnas.search.budget import BUDGET_REGIONS, genotype_gflops
from mmnas.tasks import TASKS, task_named


def _lin(rows, fan_in, fan_out):
    return 2.0 * rows * fan_in * fan_out


def _attflat(cfg, positions):
    H, G = cfg.hidden_size, cfg.glimpses
    return _lin(positions, H, cfg.flat_mlp) + _lin(positions, cfg.flat_mlp, G) + 2.0 * G * positions * H \
        + _lin(1, H * G, cfg.flat_out)


def test_answer_head_flops_count_each_datasets_dictionary():
    cfg = load_config("small").model
    answer = task_named("answer")
    n, T = BUDGET_REGIONS, cfg.max_token
    both_attflats = _attflat(cfg, T) + _attflat(cfg, n)
    assert answer.head_flops(cfg, "vqa", n, T) == both_attflats + _lin(1, cfg.flat_out, 3129)
    assert answer.head_flops(cfg, "gqa", n, T) == both_attflats + _lin(1, cfg.flat_out, 1843)
    # VQA-v2's budget is what it was before tasks existed (the default head of forward_gflops)
    genotype = {"enc": cfg.enc, "dec": cfg.dec}
    assert genotype_gflops(cfg, genotype, answer.head_flops(cfg, "vqa", n, T)) == forward_gflops(cfg, n=n)
    assert genotype_gflops(cfg, genotype, answer.head_flops(cfg, "gqa", n, T)) < forward_gflops(cfg, n=n)


def test_grounding_head_flops_by_hand():
    cfg = load_config("vgd_small").model
    n, T = 100, cfg.max_token
    expected = _attflat(cfg, T) + _lin(n, cfg.hidden_size, cfg.flat_out) + _lin(n, cfg.flat_out, 1) \
        + _lin(n, cfg.flat_out, 4)
    assert task_named("grounding").head_flops(cfg, "refcoco", n, T) == expected


def test_matching_head_flops_by_hand():
    cfg = load_config("itm_small").model
    n, T = BUDGET_REGIONS, cfg.max_token
    expected = _attflat(cfg, T) + _attflat(cfg, n) + _lin(1, cfg.flat_out, 1)  # one matching logit
    assert task_named("matching").head_flops(cfg, "flickr30k", n, T) == expected


def test_piece_trims_regions_and_per_region_targets_only():
    task = task_named("grounding")
    B, N, T = 4, 6, 15
    loaded = {"region_feats": np.zeros((B, N, 8)), "boxes": np.zeros((B, N, 4)), "token_ids": np.zeros((B, T)),
              "score_target": np.zeros((B, N)), "scores_mask": np.zeros(B), "delta_targets": np.zeros((B, N, 4)),
              "bbox_mask": np.zeros((B, N)), "gt_box": np.zeros((B, 4)), "image_size": np.zeros((B, 2)),
              "index": np.arange(B)}
    piece = task.piece(task.as_batch(loaded), 1, 3, 5)
    assert piece["region_feats"].shape == (2, 5, 8) and piece["score_target"].shape == (2, 5)
    assert piece["delta_targets"].shape == (2, 5, 4) and piece["bbox_mask"].shape == (2, 5)
    assert piece["token_ids"].shape == (2, T) and piece["gt_box"].shape == (2, 4)  # not per region: whole
    assert piece["index"].tolist() == [1, 2]
    # the answer task's tuple batches are named in order
    named = task_named("answer").as_batch((1, 2, 3, 4, 5))
    assert list(named) == ["region_feats", "boxes", "token_ids", "answer_scores", "index"]


def test_backward_scale_gives_the_global_batch_gradient():
    # a summed loss: DataParallel averages over processes, so x world gives the global sum
    assert task_named("answer").backward_scale(world=4, parts=2) == 4
    # a mean loss: the processes' average is the global mean; ACCU sub-batches are averaged
    assert task_named("grounding").backward_scale(world=4, parts=2) == 0.5
    # the matching loss is summed over the captions' triplets
    assert task_named("matching").backward_scale(world=4, parts=2) == 4
    assert set(TASKS) == {"answer", "grounding", "matching"}
