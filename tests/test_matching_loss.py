"""The matching loss against a hand computation, and the -100 clamp of the reference's BCE."""
import math
import os
import sys

import numpy as np
import paddle
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.models.matching_loss import matching_loss, pair_bce_sum  # noqa: E402


def t(values):
    return paddle.to_tensor(np.array(values, dtype=np.float32), stop_gradient=False)


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


POS, NEGC, NEGI = [0.5, -1.0, 2.0], [0.3, -2.0, 1.0], [-0.7, 0.0, 1.5]


def hand_loss(positive_weight):
    pos = -sum(math.log(sig(z)) for z in POS)
    negc = -sum(math.log(1 - sig(z)) for z in NEGC)
    negi = -sum(math.log(1 - sig(z)) for z in NEGI)
    return positive_weight * pos + negc + negi, pos, negc, negi


@pytest.mark.parametrize("bce_form", ["sigmoid", "logits"])
@pytest.mark.parametrize("positive_weight", [2.0, 1.0])
def test_loss_equals_hand_computation(bce_form, positive_weight):
    out = matching_loss(t(POS), t(NEGC), t(NEGI), positive_weight=positive_weight, bce_form=bce_form)
    total, pos, negc, negi = hand_loss(positive_weight)
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)
    assert float(out["loss_pos"]) == pytest.approx(pos, rel=1e-5)
    assert float(out["loss_negc"]) == pytest.approx(negc, rel=1e-5)
    assert float(out["loss_negi"]) == pytest.approx(negi, rel=1e-5)


def test_doubled_positive_gradient():
    """d loss / d z_pos = w * (sigmoid(z) - 1): the weight doubles the positive's pull."""
    pos = t(POS)
    matching_loss(pos, t(NEGC), t(NEGI))["loss"].backward()
    assert np.allclose(pos.grad.numpy(), [2 * (sig(z) - 1) for z in POS], atol=1e-6)


def test_reference_clamp_and_zero_gradient_when_saturated():
    """BCE on sigmoids (the reference's form) clamps log at -100: a negative scored 30 costs 100
    and teaches nothing; the logits form costs 30 with gradient 1. Below saturation they agree."""
    z = t([30.0, 5.0])
    loss = pair_bce_sum(z, 0.0, "sigmoid")
    assert float(loss) == pytest.approx(100.0 + 5.0067153, rel=1e-5)
    loss.backward()
    assert np.allclose(z.grad.numpy(), [0.0, sig(5.0)], atol=1e-6)
    z2 = t([30.0, 5.0])
    loss2 = pair_bce_sum(z2, 0.0, "logits")
    assert float(loss2) == pytest.approx(30.0 + 5.0067153, rel=1e-5)
    loss2.backward()
    assert np.allclose(z2.grad.numpy(), [1.0, sig(5.0)], atol=1e-6)


def test_matches_torch_bce_on_sigmoids():
    torch = pytest.importorskip("torch")
    z = np.array([-120.0, -20.0, -3.0, 0.0, 3.0, 16.0, 17.0, 40.0], dtype=np.float32)
    for target in (0.0, 1.0):
        ours = float(pair_bce_sum(paddle.to_tensor(z), target, "sigmoid"))
        zt = torch.from_numpy(z)
        ref = float(torch.nn.functional.binary_cross_entropy(torch.sigmoid(zt), torch.full_like(zt, target),
                                                             reduction="sum"))
        assert ours == pytest.approx(ref, rel=1e-5)


def test_unknown_form_refused():
    with pytest.raises(ValueError, match="bce_form must be one of sigmoid, logits"):
        pair_bce_sum(t([0.0]), 1.0, "hinge")
