"""The learned first stage ranks pairs whose features are related, from precomputed features."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.metrics.retrieval import retrieval_scores  # noqa: E402
from mmnas.models.matching_first_stage import fit_first_stage  # noqa: E402


def test_fitted_first_stage_ranks_far_above_chance():
    rng = np.random.default_rng(0)
    n = 40
    images = rng.normal(size=(n, 12)).astype("float32")
    mixing = rng.normal(size=(12, 20)).astype("float32")
    captions = (np.repeat(images, 5, axis=0) @ mixing + 0.3 * rng.normal(size=(5 * n, 20))).astype("float32")
    before = retrieval_scores(fit_first_stage(images, captions, steps=0, dim=16).scores(images, captions))
    model = fit_first_stage(images, captions, steps=200, batch_size=32, dim=16, lr=3e-3)
    after = retrieval_scores(model.scores(images, captions))
    assert after["t2i_r1"] > 80 and after["i2t_r1"] > 80  # chance: 2.5
    assert after["rsum"] > before["rsum"] + 200


def test_caption_count_must_fit():
    with pytest.raises(ValueError, match="expected 5 per image"):
        fit_first_stage(np.zeros((3, 4), "float32"), np.zeros((14, 4), "float32"))
