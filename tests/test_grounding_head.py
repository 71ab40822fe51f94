"""The grounding head (mmnas/models/grounding_head.py) against the formula of spec 1.2 in numpy,
its padding (masked regions get no probability and do not change the others) and its init."""
import math

import numpy as np
import paddle

from mmnas.config import load_config
from mmnas.models.grounding_head import GroundingHead
from mmnas.ops import make_mask, make_token_mask


def head_and_inputs(seed=0, B=3, T=6, N=7):
    cfg = load_config("tiny").model
    paddle.seed(seed)
    head = GroundingHead(cfg)
    head.eval()
    rng = np.random.default_rng(seed)
    lang = rng.normal(size=(B, T, cfg.hidden_size)).astype(np.float32)
    img = rng.normal(size=(B, N, cfg.hidden_size)).astype(np.float32)
    ids = np.ones((B, T), dtype=np.int64)
    ids[0, 4:] = 0  # padded tokens
    feats = np.ones((B, N, 3), dtype=np.float32)
    feats[1, 5:] = 0  # padded regions
    return cfg, head, lang, img, ids, feats


def numpy_head(head, lang, img, ids, feats):
    w = {k: v.numpy().astype(np.float64) for k, v in head.state_dict().items()}
    hidden = np.maximum(lang @ w["attflat_lang.mlp.fc.linear.weight"] + w["attflat_lang.mlp.fc.linear.bias"], 0)
    att = hidden @ w["attflat_lang.mlp.linear.weight"] + w["attflat_lang.mlp.linear.bias"]  # [B, T, 1]
    att = np.where((ids == 0)[:, :, None], -1e9, att)
    att = np.exp(att - att.max(1, keepdims=True))
    att = att / att.sum(1, keepdims=True)
    text = (att * lang).sum(1) @ w["attflat_lang.linear_merge.weight"] + w["attflat_lang.linear_merge.bias"]
    z = text[:, None] + img @ w["attfc_img.weight"] + w["attfc_img.bias"]
    z = w["proj_norm.a_2"] * (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-6) \
        + w["proj_norm.b_2"]
    scores = (z @ w["proj_scores.weight"] + w["proj_scores.bias"])[..., 0]
    padded = np.abs(feats).sum(-1) == 0
    scores = np.where(padded, -np.inf, scores)
    log_scores = scores - scores.max(1, keepdims=True)
    log_scores = log_scores - np.log(np.exp(log_scores).sum(1, keepdims=True))
    return log_scores, z @ w["proj_reg.weight"] + w["proj_reg.bias"], padded


def run(head, lang, img, ids, feats):
    t = paddle.to_tensor
    with paddle.no_grad():
        log_scores, deltas = head(t(lang), make_token_mask(t(ids)), t(img), make_mask(t(feats)))
    return log_scores.numpy(), deltas.numpy()


def test_matches_formula_in_numpy():
    cfg, head, lang, img, ids, feats = head_and_inputs()
    log_scores, deltas = run(head, lang, img, ids, feats)
    expected_scores, expected_deltas, padded = numpy_head(head, lang, img, ids, feats)
    assert log_scores.shape == (3, 7) and deltas.shape == (3, 7, 4)
    np.testing.assert_allclose(log_scores[~padded], expected_scores[~padded], atol=1e-4)
    np.testing.assert_allclose(deltas, expected_deltas, atol=1e-4)
    np.testing.assert_allclose(np.exp(log_scores).sum(1), 1.0, atol=1e-5)
    assert np.exp(log_scores[padded]).max() == 0.0


def test_padded_regions_do_not_change_real_ones():
    cfg, head, lang, img, ids, feats = head_and_inputs(1)
    log_scores, deltas = run(head, lang, img, ids, feats)
    extra = np.concatenate([img, np.random.default_rng(5).normal(size=(3, 2, cfg.hidden_size)).astype(np.float32)], 1)
    extra_feats = np.concatenate([feats, np.zeros((3, 2, 3), np.float32)], 1)
    log_scores2, deltas2 = run(head, lang, extra, ids, extra_feats)
    real = np.abs(feats).sum(-1) > 0
    np.testing.assert_allclose(log_scores2[:, :7][real], log_scores[real], atol=1e-5)
    np.testing.assert_allclose(deltas2[:, :7], deltas, atol=1e-5)


def test_init_like_reference():
    cfg, head, *_ = head_and_inputs(2)
    for name, fan_in in (("attfc_img", cfg.hidden_size), ("proj_scores", cfg.flat_out), ("proj_reg", cfg.flat_out)):
        layer = getattr(head, name)
        bound = 1 / math.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            v = p.numpy()
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.5 * bound, name  # U(-b, b), not zeros
    assert list(head.attfc_img.weight.shape) == [cfg.hidden_size, cfg.flat_out]
    assert list(head.proj_reg.weight.shape) == [cfg.flat_out, 4]
    assert sorted(k.split(".")[0] for k in head.state_dict()) == sorted(
        ["attflat_lang"] * 6 + ["attfc_img"] * 2 + ["proj_norm"] * 2 + ["proj_scores"] * 2 + ["proj_reg"] * 2)
