"""train.loss: both losses against hand computations in numpy (float64), values and gradients."""
import numpy as np
import paddle
import pytest

from mmnas.data.vocab import answer_scores
from mmnas.models.loss import answer_loss


def _case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6)) * 2
    # targets as the dataset makes them: "red" matched by 7 of 10 humans, "blue" by 3, ...
    ans_to_ix = {a: i for i, a in enumerate(["red", "blue", "green", "cat", "dog", "tree"])}
    rows = [["red"] * 7 + ["blue"] * 3, ["green"] * 10, ["cat"] * 2 + ["zebra"] * 8]
    return logits, ans_to_ix, rows


def _run(kind):
    logits, ans_to_ix, rows = _case()
    targets = np.stack([answer_scores(r, ans_to_ix, kind) for r in rows])
    x = paddle.to_tensor(logits.astype("float32"), stop_gradient=False)
    loss = answer_loss(x, paddle.to_tensor(targets), kind)
    loss.backward()
    return logits, targets, float(loss), x.grad.numpy()


def test_kld_is_kl_divergence_of_softmax_against_count_over_ten():
    logits, targets, loss, grad = _run("kld")
    np.testing.assert_allclose(targets[0, :2], [0.7, 0.3])
    np.testing.assert_allclose(targets[2, 3], 0.2)  # answers outside the vocabulary ("zebra") are not in the target
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    pos = targets > 0
    expected = (targets[pos] * (np.log(targets[pos]) - log_p[pos])).sum()
    assert loss == pytest.approx(expected, rel=1e-5)
    # d/dlogits of sum_a t_a (log t_a - log p_a) = p * sum(t) - t, per row
    p = np.exp(log_p)
    np.testing.assert_allclose(grad, p * targets.sum(1, keepdims=True) - targets, atol=1e-5)


def test_bce_is_summed_binary_cross_entropy_of_soft_scores():
    logits, targets, loss, grad = _run("bce")
    np.testing.assert_allclose(targets[0, :2], [1.0, 0.9])  # 7 matches -> 1.0, 3 -> 0.9
    s = 1 / (1 + np.exp(-logits))
    expected = -(targets * np.log(s) + (1 - targets) * np.log(1 - s)).sum()
    assert loss == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, s - targets, atol=1e-5)


def test_ce_is_summed_cross_entropy_of_one_answer():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5))
    answers = np.array([0, 3, 3, 1])
    x = paddle.to_tensor(logits.astype("float32"), stop_gradient=False)
    loss = answer_loss(x, paddle.to_tensor(np.eye(5, dtype="float32")[answers]), "ce")
    loss.backward()
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(-log_p[np.arange(4), answers].sum(), rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), np.exp(log_p) - np.eye(5)[answers], atol=1e-5)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="train.loss"):
        answer_loss(paddle.zeros([1, 2]), paddle.zeros([1, 2]), "mse")
