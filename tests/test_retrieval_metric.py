"""Retrieval metrics against hand-made score matrices: index conventions, ties, chance."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.metrics.retrieval import (chance_recalls, format_retrieval, i2t_ranks, recall_summary,  # noqa: E402
                                     retrieval_scores, t2i_ranks)


def hand_matrix():
    """3 images x 15 captions (caption c -> image c // 5), scores chosen so every rank is known."""
    S = np.zeros((3, 15))
    # image 0: its caption 3 is best -> i2t rank 0
    S[0] = np.arange(15) * -0.01
    S[0, 3] = 1.0
    # image 1: captions 12, 0 beat its best own caption 7 -> rank 2
    S[1] = -1.0
    S[1, 12], S[1, 0], S[1, 7], S[1, 5] = 0.9, 0.8, 0.5, 0.1
    # image 2: 7 foreign captions above its own (all own captions 0.0) -> rank 7
    S[2] = 0.0
    S[2, [0, 1, 2, 3, 4, 5, 6]] = 1.0
    S[2, 7:10] = -1.0
    return S


def test_i2t_ranks_are_the_first_own_caption():
    assert i2t_ranks(hand_matrix()).tolist() == [0, 2, 7]


def test_t2i_ranks_are_the_position_of_the_own_image():
    S = hand_matrix()
    ranks = t2i_ranks(S)
    # by hand, column by column (descending; ties -> lower image index first)
    expected = []
    for c in range(15):
        col = S[:, c]
        own = c // 5
        better = int((col > col[own]).sum()) + int((col[:own] == col[own]).sum())
        expected.append(better)
    assert ranks.tolist() == expected
    # spot checks written out: caption 3 (image 0): column [1.0, -1, 1.0] -> image 0 first
    assert ranks[3] == 0
    # caption 12 (image 2): column [-0.12, 0.9, 0.0] -> image 1, then image 2 -> rank 1
    assert ranks[12] == 1
    # caption 7 (image 1): column [-0.07, 0.5, -1.0] -> rank 0
    assert ranks[7] == 0


def test_recalls_medr_meanr_by_hand():
    s = recall_summary(np.array([0, 2, 7]))
    assert s["r1"] == pytest.approx(100 / 3)
    assert s["r5"] == pytest.approx(200 / 3)
    assert s["r10"] == pytest.approx(100.0)
    assert s["medr"] == 3.0  # floor(median 2) + 1
    assert s["meanr"] == pytest.approx(3.0 + 1)  # mean 3 + 1
    s = recall_summary(np.array([0, 1, 4, 9]))  # median 2.5 -> floor 2 -> medr 3
    assert s["medr"] == 3.0 and s["meanr"] == pytest.approx(4.5)


def test_perfect_and_reversed_scorers():
    n = 20
    S = np.full((n, 5 * n), -1.0)
    for i in range(n):
        S[i, 5 * i:5 * i + 5] = 1.0
    r = retrieval_scores(S)
    assert all(r[f"{d}_r{k}"] == 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert r["i2t_medr"] == 1 and r["t2i_meanr"] == 1 and r["rsum"] == 600.0
    r = retrieval_scores(-S)  # own pairs worst
    assert r["i2t_r10"] == 0.0 and r["t2i_r10"] == 0.0
    assert r["t2i_medr"] == n  # own image last: rank n-1
    assert r["i2t_medr"] == 5 * n - 5 + 1  # first own caption after all 5n-5 foreign ones


def test_constant_matrix_gives_the_tie_values():
    """The 'collapsed scorer' values at n = 50: t2i 2/10/20 (K/n), i2t 2/2/4 (ceil(K/5)/n)."""
    r = retrieval_scores(np.zeros((50, 250), dtype=np.float32))
    assert [r[f"t2i_r{k}"] for k in (1, 5, 10)] == [2.0, 10.0, 20.0]
    assert [r[f"i2t_r{k}"] for k in (1, 5, 10)] == [2.0, 2.0, 4.0]
    assert r["t2i_medr"] == 25.0  # ranks 0..49, 5 captions each: median 24.5 -> 24 + 1


def test_chance_values_of_the_spec():
    c = chance_recalls(50)
    assert [round(c[f"i2t_r{k}"], 1) for k in (1, 5, 10)] == [2.0, 9.7, 18.6]
    assert [c[f"t2i_r{k}"] for k in (1, 5, 10)] == [2.0, 10.0, 20.0]


def test_random_matrix_near_chance():
    rng = np.random.default_rng(0)
    recalls = np.mean([[retrieval_scores(rng.random((50, 250)))[f"t2i_r{k}"] for k in (1, 5, 10)]
                       for _ in range(20)], axis=0)
    assert np.allclose(recalls, [2.0, 10.0, 20.0], atol=1.5)


def test_chunked_sort_equals_one_sort():
    rng = np.random.default_rng(1)
    S = rng.integers(0, 4, size=(300, 1500)).astype(np.float32)  # many ties, > one row chunk
    ranks = i2t_ranks(S)
    for i in (0, 255, 256, 299):
        order = np.argsort(-S[i], kind="stable")
        assert ranks[i] == next(p for p, c in enumerate(order) if c // 5 == i)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="n_cap = 5 \\* n_img = 10"):
        i2t_ranks(np.zeros((2, 9)))
    with pytest.raises(ValueError, match="2-D"):
        t2i_ranks(np.zeros(10))


def test_format_line():
    line = format_retrieval(retrieval_scores(hand_matrix()))
    assert line.startswith("i2t R@1/5/10 33.33/66.67/100.00 medr 3")
    assert "rsum" in line
