"""The image-text matching loss of the reference (MILVLG/mmnas `itm_loss.py`, spec section 2.3).

Every training caption c (image i = c // 5) gives three pairs: the positive (i, c), a negative
caption (i, c') and a negative image (i', c). With s = sigmoid(logit) and sums over the batch:

    L = positive_weight * BCE_sum(s_pos, 1) + BCE_sum(s_negc, 0) + BCE_sum(s_negi, 0)

positive_weight is 2 by default because the reference adds its positive term twice (spec
section 2.3: observed in the code, intent unknown). With two negatives per positive, weight 2
balances the positive and negative targets: the gradient pushes matching pairs up as hard as
it pushes the two non-matching pairs down. Set it to 1 for the plain sum.

`bce_form` picks how BCE is computed from the logits:
- "sigmoid" (default, the reference): BCE on sigmoid probabilities. PyTorch and Paddle (checked
  on Paddle 3.3.1 and torch 2.13, tests/test_matching_loss.py) both clamp log(p) at -100, and in
  float32 sigmoid(z) rounds to exactly 1 for z > ~16.6, so a negative pair scored above that
  costs 100 with zero gradient (and a positive below ~-88 likewise): saturated mistakes stop
  teaching. Everywhere else it equals the logits form to float rounding.
- "logits": the numerically stable BCE-with-logits; a saturated mistake costs |z| and keeps a
  gradient of 1. Not the reference's numbers once a pair saturates.
"""
from __future__ import annotations

from typing import Dict

import paddle
import paddle.nn.functional as F

BCE_FORMS = ("sigmoid", "logits")


def pair_bce_sum(logits, target: float, bce_form: str = "sigmoid"):
    """Summed BCE of matching logits [B] against a constant target (1 match, 0 no match)."""
    targets = paddle.full_like(logits, target)
    if bce_form == "sigmoid":
        return F.binary_cross_entropy(F.sigmoid(logits), targets, reduction="sum")
    if bce_form == "logits":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    raise ValueError(f"bce_form must be one of {', '.join(BCE_FORMS)}, not {bce_form!r}")


def matching_loss(pos_logits, negc_logits, negi_logits, positive_weight: float = 2.0,
                  bce_form: str = "sigmoid") -> Dict[str, paddle.Tensor]:
    """{"loss": the total to backpropagate, "loss_pos", "loss_negc", "loss_negi": its three
    summed terms (loss_pos unweighted)}; every argument a logit tensor [B]."""
    loss_pos = pair_bce_sum(pos_logits, 1.0, bce_form)
    loss_negc = pair_bce_sum(negc_logits, 0.0, bce_form)
    loss_negi = pair_bce_sum(negi_logits, 0.0, bce_form)
    return {"loss": positive_weight * loss_pos + loss_negc + loss_negi,
            "loss_pos": loss_pos, "loss_negc": loss_negc, "loss_negi": loss_negi}
