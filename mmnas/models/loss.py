"""The answer loss, `train.loss` in the config, summed over the batch: one definition for
training (engine/train.py) and every search strategy (mmnas/search/).

- bce: binary cross-entropy with logits against the soft scores 0 / 0.3 / 0.6 / 0.9 / 1.0 of
  each answer (how many of the 10 human answers it matches), the published setting;
- kld: KL divergence KL(t || softmax(logits)) against t = matches / 10, the original's
  alternative (openvqa's LOSS_FUNC kld: log-softmax of the logits into KLDivLoss, summed);
- ce: cross-entropy of softmax(logits) against one answer per question (a one-hot target),
  the GQA recipe.
The targets themselves come from the dataset (`data.vocab.answer_scores` on VQA-v2, one-hot
rows on GQA).
"""
from __future__ import annotations

import paddle.nn.functional as F

from ..config import LOSSES  # the names train.loss accepts


def answer_loss(logits, targets, kind: str = "bce"):
    """Summed loss of logits [B, A] against targets [B, A] (float32)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    if kind == "kld":
        # sum over t > 0 of t * (log t - log_softmax(logits)); terms with t = 0 contribute 0
        return F.kl_div(F.log_softmax(logits, axis=-1), targets, reduction="sum")
    if kind == "ce":
        return -(targets * F.log_softmax(logits, axis=-1)).sum()
    raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, not {kind!r}")
