"""The matching head and MatchingNet: equal to MMNasNet with one output (same backbone, same
fusion), sigmoid-free logits, padding-invariant, all-pairs scoring by broadcasting."""
import os
import sys

import numpy as np
import paddle
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.config import load_config  # noqa: E402
from mmnas.models import MMNasNet  # noqa: E402
from mmnas.models.matching_head import MatchingNet  # noqa: E402


def tiny_itm_cfg():
    cfg = load_config("tiny").model
    cfg.feat_size = 32
    cfg.enc = ["SA", "FFN"]
    cfg.dec = ["GA", "RSA", "SA", "FFN"]
    return cfg


def batch(rng, b=4, n=6, t=9, vocab=30):
    feats = rng.normal(0, 1, (b, n, 32)).astype("float32")
    x1 = rng.uniform(0, 200, (b, n, 1)); y1 = rng.uniform(0, 200, (b, n, 1))
    boxes = np.concatenate([x1, y1, x1 + rng.uniform(5, 90, (b, n, 1)),
                            y1 + rng.uniform(5, 90, (b, n, 1))], -1).astype("float32")
    ids = rng.integers(3, vocab, (b, t)).astype("int64")
    ids[1, 5:] = 0
    feats[2, 4:] = 0; boxes[2, 4:] = 0
    return feats, boxes, ids


def eval_net(seed):
    paddle.seed(seed)
    net = MatchingNet(tiny_itm_cfg(), token_size=30)
    net.eval()
    return net


def T(a):
    return paddle.to_tensor(a)


def test_matching_net_equals_mmnasnet_with_one_output():
    cfg = tiny_itm_cfg()
    net = eval_net(3)
    other = MMNasNet(cfg, 30, 1)
    other.eval()
    renamed = {k.replace("head.", ""): v for k, v in net.state_dict().items()}
    other.set_state_dict(renamed)
    f, b, q = batch(np.random.default_rng(0))
    ours = net(T(f), T(b), T(q)).numpy()
    theirs = other(T(f), None, T(b), T(q)).numpy()
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours, theirs[:, 0], atol=1e-5)
    assert set(renamed) == set(other.state_dict())


def test_padding_does_not_change_scores():
    net = eval_net(4)
    f, b, q = batch(np.random.default_rng(1))
    base = net(T(f), T(b), T(q)).numpy()
    f2 = np.concatenate([f, np.zeros((4, 3, 32), "float32")], 1)
    b2 = np.concatenate([b, np.zeros((4, 3, 4), "float32")], 1)
    q2 = np.concatenate([q, np.zeros((4, 5), "int64")], 1)
    np.testing.assert_allclose(net(T(f2), T(b2), T(q2)).numpy(), base, atol=1e-5)


def test_scores_depend_on_the_pair():
    net = eval_net(5)
    f, b, q = batch(np.random.default_rng(2))
    same = net(T(f), T(b), T(q)).numpy()
    swapped = net(T(f), T(b), T(q[::-1].copy())).numpy()
    assert np.abs(same - swapped).max() > 1e-4


def test_summary_scores_broadcast_over_all_pairs():
    net = eval_net(6)
    f, b, q = batch(np.random.default_rng(3))
    t = net.caption_summary(T(q))  # [C, F]
    v = net.image_summary(T(f))  # [I, F]
    all_pairs = net.head.score(t.unsqueeze(1), v.unsqueeze(0)).numpy()  # [C, I]
    for c in range(4):
        for i in range(4):
            one = net.head.score(t[c:c + 1], v[i:i + 1]).numpy()[0]
            assert all_pairs[c, i] == pytest.approx(one, abs=1e-5)


def test_gradients_reach_every_parameter():
    paddle.seed(7)
    net = MatchingNet(tiny_itm_cfg(), token_size=30)
    f, b, q = batch(np.random.default_rng(4))
    net(T(f), T(b), T(q)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not np.any(p.grad.numpy())]
    assert not missing, missing
