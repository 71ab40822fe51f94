"""The visual grounding loss of the MMnas reference (train_vgd.py, LOSS_AVG, SCORES_LOSS kld):

    score_loss = sum_b m_b * KL(p_b || softmax_b) / sum_b m_b
    box_loss   = SmoothL1_sum(deltas * M, delta_targets * M) / sum M      (beta = 1)
    loss       = score_loss + BOX_LOSS_WEIGHT * box_loss

p_b is the sample's target distribution over regions (IoU-weighted positives, summing to 1), m_b
its scores_mask (0 when no proposal reaches IoU 0.5), M the bbox_mask of positive regions (the
divisor counts regions, not region x 4 coordinates). The reference divides by zero when a batch
has no positive at all; here each divisor is at least 1, which changes nothing otherwise (the
masks are 0/1) and makes such a batch's loss 0 with zero gradients instead of NaN.
"""
from __future__ import annotations

import paddle

BOX_LOSS_WEIGHT = 0.5  # LOSS_LAMBDA


def smooth_l1(x):
    """Elementwise SmoothL1 with beta 1: 0.5 x^2 where |x| < 1, else |x| - 0.5."""
    ax = paddle.abs(x)
    return paddle.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def grounding_loss(log_scores, deltas, score_target, scores_mask, delta_targets, bbox_mask,
                   box_weight: float = BOX_LOSS_WEIGHT) -> dict:
    """log_scores [B, N] (log-softmax over regions), deltas [B, N, 4] (normalised units),
    score_target [B, N], scores_mask [B] (or [B, 1]), delta_targets [B, N, 4], bbox_mask [B, N]
    (or [B, N, 1]) -> {"loss", "score_loss", "box_loss"} (scalar tensors)."""
    m = scores_mask.reshape([-1, 1]).astype(log_scores.dtype)  # [B, 1]
    p = score_target.astype(log_scores.dtype) * m  # [B, N]
    # p * (log p - log q), with 0 where p = 0 (KLDivLoss's convention; log q may be -1e9 at padding)
    safe_p = paddle.where(p > 0, p, paddle.ones_like(p))
    kl = paddle.where(p > 0, p * (paddle.log(safe_p) - log_scores * m), paddle.zeros_like(p))
    score_loss = kl.sum() / paddle.clip(m.sum(), min=1.0)

    box_mask = bbox_mask.reshape(bbox_mask.shape[:2] + [1]).astype(deltas.dtype)  # [B, N, 1]
    box_loss = smooth_l1(deltas * box_mask - delta_targets.astype(deltas.dtype) * box_mask).sum() \
        / paddle.clip(box_mask.sum(), min=1.0)
    return {"loss": score_loss + box_weight * box_loss, "score_loss": score_loss, "box_loss": box_loss}
