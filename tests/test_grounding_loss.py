"""The grounding loss (mmnas/models/grounding_loss.py) against a hand computation in numpy:
KL to the IoU-weighted positives / sum of scores_mask + 0.5 x SmoothL1 on masked normalised
deltas / positive regions; a batch without any positive gives 0, not NaN."""
import numpy as np
import paddle
import pytest

from mmnas.models.grounding_loss import grounding_loss


def numpy_loss(log_q, deltas, p, m, t, M):
    """The formula of the spec, written out: sums over samples with m = 1 and positive regions."""
    score = sum(p[b, i] * (np.log(p[b, i]) - log_q[b, i])
                for b in range(len(p)) if m[b] for i in range(p.shape[1]) if p[b, i] > 0) / m.sum()
    x = (deltas - t) * M[:, :, None]
    sl1 = np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5).sum()
    return score, sl1 / M.sum()


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    B, N = 4, 6
    logits = rng.normal(size=(B, N))
    logits[1, 5] = -1e9  # a padded region
    log_q = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    deltas = rng.normal(scale=2.0, size=(B, N, 4))  # both SmoothL1 branches
    t = rng.normal(scale=2.0, size=(B, N, 4))
    ious = rng.uniform(0, 1, size=(B, N))
    ious[2] = 0.3  # sample 2: no proposal reaches 0.5
    ious[1, 5] = 0.0
    M = (ious >= 0.5).astype(float)
    p = np.where(M > 0, ious, 0.0)
    p = p / (p.sum(1, keepdims=True) + 1e-8)
    m = (M.sum(1) > 0).astype(float)
    t[2] = 100.0  # a sample without positives must not contribute, however far off
    return log_q, deltas, p, m, t, M


def run(log_q, deltas, p, m, t, M, bbox_mask_shape=None):
    f = lambda a: paddle.to_tensor(np.asarray(a, dtype=np.float32))
    bbox_mask = M if bbox_mask_shape is None else M.reshape(bbox_mask_shape)
    return grounding_loss(f(log_q), f(deltas), f(p), f(m), f(t), f(bbox_mask))


def test_against_numpy_hand_computation():
    log_q, deltas, p, m, t, M = make_batch()
    assert m.tolist() == [1, 1, 0, 1] and M.sum() >= 3
    np.testing.assert_allclose(p[m > 0].sum(1), 1.0, atol=1e-6)  # KL targets sum to 1
    score, box = numpy_loss(log_q, deltas, p, m, t, M)
    out = run(log_q, deltas, p, m, t, M)
    assert float(out["score_loss"]) == pytest.approx(score, rel=1e-5)
    assert float(out["box_loss"]) == pytest.approx(box, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(score + 0.5 * box, rel=1e-5)
    # masks shaped as the reference's loader gives them: scores_mask [B, 1], bbox_mask [B, N, 1]
    out2 = run(log_q, deltas, p, m.reshape(-1, 1), t, M, bbox_mask_shape=(4, 6, 1))
    assert float(out2["loss"]) == pytest.approx(float(out["loss"]), rel=1e-6)


def test_perfect_prediction_costs_nothing():
    log_q, deltas, p, m, t, M = make_batch(1)
    log_perfect = np.log(np.where(p > 0, p, 1e-30))
    out = run(np.where(m[:, None] > 0, log_perfect, log_q), t, p, m, t, M)
    assert abs(float(out["score_loss"])) < 1e-5 and float(out["box_loss"]) == 0.0


def test_no_positive_in_batch_is_zero_not_nan():
    log_q, deltas, p, m, t, M = make_batch(2)
    zeros = np.zeros_like
    log_scores = paddle.to_tensor(log_q.astype(np.float32), stop_gradient=False)
    pred = paddle.to_tensor(deltas.astype(np.float32), stop_gradient=False)
    f = lambda a: paddle.to_tensor(np.asarray(a, dtype=np.float32))
    out = grounding_loss(log_scores, pred, f(zeros(p)), f(zeros(m)), f(t), f(zeros(M)))
    assert float(out["loss"]) == 0.0 and float(out["score_loss"]) == 0.0 and float(out["box_loss"]) == 0.0
    out["loss"].backward()
    assert np.isfinite(log_scores.grad.numpy()).all() and np.abs(pred.grad.numpy()).max() == 0.0
