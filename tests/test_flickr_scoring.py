"""Full score matrix and two-stage retrieval: values, data-parallel rows, and the network's
numpy callables."""
import os
import sys

import numpy as np
import paddle
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.config import load_config  # noqa: E402
from mmnas.data.flickr import FlickrDataset, build_caption_vocab  # noqa: E402
from mmnas.data.flickr_scoring import cheap_score_matrix, full_score_matrix, two_stage_score_matrix  # noqa: E402
from mmnas.data.synthetic_flickr import make_synthetic_flickr  # noqa: E402
from mmnas.metrics.retrieval import retrieval_scores  # noqa: E402
from mmnas.models.matching_head import MatchingNet, first_stage, pair_scorer  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("score"))
    make_synthetic_flickr(root, n_train_images=2, n_dev_images=2, n_test_images=9, feat_size=8, seed=6)
    return FlickrDataset(root, "test", build_caption_vocab(root), progress=False, feat_size=8)


def pair_value(images, captions):
    return ((images * 7919 + captions * 104729) % 1000) / 1000.0 + 2.0 * (captions // 5 == images)


def scorer(batch):
    return pair_value(batch["image_index"], batch["caption_index"]).astype(np.float32)


def grid(n_img, n_cap):
    return pair_value(np.arange(n_img)[:, None], np.arange(n_cap)[None, :])


def test_full_matrix_values_and_stats(dataset):
    S, stats = full_score_matrix(dataset, scorer, caption_chunk=7, progress=False)
    np.testing.assert_allclose(S, grid(9, 45), rtol=1e-6)
    assert stats["pairs"] == 9 * 45 and stats["pairs_per_s"] > 0


@pytest.mark.parametrize("world", [2, 4])
def test_rows_split_over_processes_sum_to_one_process(dataset, world):
    one, _ = full_score_matrix(dataset, scorer, progress=False)
    parts = [full_score_matrix(dataset, scorer, rank=r, world=world, progress=False)[0] for r in range(world)]
    assert all((p != 0).any(axis=1).sum() <= -(-9 // world) for p in parts)  # each filled only its rows
    np.testing.assert_array_equal(np.sum(parts, axis=0), one)


def test_two_stage_with_a_perfect_first_stage_keeps_recall(dataset):
    exact = grid(9, 45)
    S, stats = two_stage_score_matrix(dataset, scorer, exact.astype(np.float32), top_k=3, progress=False)
    full = retrieval_scores(exact)
    two = retrieval_scores(S)
    for d in ("i2t", "t2i"):  # ranks within the re-scored top 3 are exact
        assert two[f"{d}_r1"] == full[f"{d}_r1"]
    assert stats["pairs"] <= 3 * (9 + 45) and stats["pairs"] < 9 * 45


def test_two_stage_puts_rescored_pairs_first(dataset):
    rng = np.random.default_rng(0)
    cheap = rng.random((9, 45)).astype(np.float32)
    S, stats = two_stage_score_matrix(dataset, scorer, cheap, top_k=2, progress=False)
    top_rows = np.argsort(-cheap, axis=1, kind="stable")[:, :2]
    for i in range(9):  # row i's best two by the cheap score carry their full scores
        np.testing.assert_allclose(S[i, top_rows[i]], grid(9, 45)[i, top_rows[i]], rtol=1e-6)
    rescored = np.isclose(S, grid(9, 45))
    assert S[~rescored].max() < S[rescored].min()
    # data parallel: rank 0's matrix with rank 1's partial added (what all_reduce gives) is the same
    other = two_stage_partial(dataset, cheap, rank=1, world=2)
    summed, _ = two_stage_score_matrix(dataset, scorer, cheap, top_k=2, rank=0, world=2, progress=False,
                                       all_reduce_sum=lambda m: m + other)
    np.testing.assert_allclose(summed, S)


def two_stage_partial(dataset, cheap, rank, world):
    captured = {}

    def keep(matrix):
        captured["m"] = matrix.copy()
        return matrix
    two_stage_score_matrix(dataset, scorer, cheap, top_k=2, rank=rank, world=world, progress=False,
                           all_reduce_sum=keep)
    return captured["m"]


def test_network_callables(dataset):
    paddle.seed(1)
    cfg = load_config("tiny").model
    cfg.feat_size, cfg.enc, cfg.dec = 8, ["SA", "FFN"], ["GA", "RSA", "FFN"]
    net = MatchingNet(cfg, token_size=len(dataset.token_to_ix))
    net.train()
    score = pair_scorer(net)
    batch = dataset.pair_batch([0, 1, 2], [4, 4, 30])
    logits = score(batch)
    assert net.training  # the mode is restored
    net.eval()
    expected = net(paddle.to_tensor(batch["region_feats"]), paddle.to_tensor(batch["boxes"]),
                   paddle.to_tensor(batch["caption_ids"])).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    S, _ = full_score_matrix(dataset, score, caption_chunk=16, progress=False)
    np.testing.assert_allclose(S[[0, 1, 2], [4, 4, 30]], logits, atol=1e-5)
    cheap = cheap_score_matrix(dataset, *first_stage(net), batch_size=4, progress=False)
    assert cheap.shape == (9, 45) and cheap.std() > 0
    summaries = first_stage(net)
    t = summaries[0](batch["caption_ids"][:1])
    v = summaries[1](dataset.image_arrays(2)[0][None])
    assert cheap[2, 4] == pytest.approx(float(summaries[2](v, t)[0, 0]), abs=1e-5)


def test_image_mean_features_skip_padding(dataset):
    from mmnas.data.flickr_scoring import image_mean_features
    means = image_mean_features(dataset, progress=False)
    assert means.shape == (9, 8)
    np.testing.assert_allclose(means[4], dataset.image_arrays(4)[0].mean(axis=0), rtol=1e-6)
