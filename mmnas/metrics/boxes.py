"""Box arithmetic of visual grounding, in numpy, with the conventions of the MMnas reference
(Faster R-CNN's), because labels, deltas and the accuracy all depend on them:

- boxes are (x1, y1, x2, y2) in pixels; a width is x2 - x1 + 1 (the "+1 pixel" convention),
  in IoU and in the deltas alike;
- a RefCOCO box [x, y, w, h] becomes (x, y, x + w, y + h), *not* x + w - 1 (the reference does
  so, although its IoU then counts the box one pixel wider than the annotation);
- deltas (dx, dy, dw, dh) = ((gcx - cx) / w, (gcy - cy) / h, log(gw / w), log(gh / h)) with
  centres cx = x1 + w / 2; they are trained divided by DELTA_STDS (means 0);
- decoding puts the box at (pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2): again
  without the -1, so decode(encode(box)) is the box with x2 and y2 one pixel larger;
- predicted boxes are clipped to x in [0, W - 1], y in [0, H - 1].
"""
from __future__ import annotations

import numpy as np

DELTA_MEANS = (0.0, 0.0, 0.0, 0.0)
DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
POSITIVE_IOU = 0.5  # a proposal is a positive (label making) and a pick is a hit (accuracy) from here


def xywh_to_xyxy(boxes) -> np.ndarray:
    """[..., 4] (x, y, w, h) -> (x, y, x + w, y + h), float64 (the reference's GT box)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], axis=-1)


def box_iou(a, b) -> np.ndarray:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4], widths x2 - x1 + 1; boxes that do not
    overlap by at least a pixel's width in x or y get 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)  # [N]
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # [M]
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1  # [N, M]
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _centres(boxes: np.ndarray):
    w = boxes[..., 2] - boxes[..., 0] + 1.0
    h = boxes[..., 3] - boxes[..., 1] + 1.0
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_deltas(proposals, gt) -> np.ndarray:
    """Deltas [..., 4] that move each proposal [..., 4] onto gt (same shape, or one [4] box)."""
    proposals = np.asarray(proposals, dtype=np.float64)
    gt = np.broadcast_to(np.asarray(gt, dtype=np.float64), proposals.shape)
    cx, cy, w, h = _centres(proposals)
    gcx, gcy, gw, gh = _centres(gt)
    return np.stack([(gcx - cx) / w, (gcy - cy) / h, np.log(gw / w), np.log(gh / h)], axis=-1)


def decode_deltas(proposals, deltas) -> np.ndarray:
    """Boxes [..., 4] from proposals [..., 4] moved by (raw, not normalised) deltas [..., 4]."""
    proposals = np.asarray(proposals, dtype=np.float64)
    deltas = np.asarray(deltas, dtype=np.float64)
    cx, cy, w, h = _centres(proposals)
    pcx, pcy = deltas[..., 0] * w + cx, deltas[..., 1] * h + cy
    pw, ph = np.exp(deltas[..., 2]) * w, np.exp(deltas[..., 3]) * h
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)


def normalize_deltas(deltas) -> np.ndarray:
    """Training targets: (deltas - DELTA_MEANS) / DELTA_STDS."""
    return (np.asarray(deltas, dtype=np.float64) - np.array(DELTA_MEANS)) / np.array(DELTA_STDS)


def denormalize_deltas(normalized) -> np.ndarray:
    """What the regression head predicts, back in delta units: x * DELTA_STDS + DELTA_MEANS."""
    return np.asarray(normalized, dtype=np.float64) * np.array(DELTA_STDS) + np.array(DELTA_MEANS)


def clip_boxes(boxes, height, width) -> np.ndarray:
    """Clip boxes [..., 4] to x in [0, width - 1], y in [0, height - 1]; height/width are
    scalars or arrays broadcasting against boxes[..., 0] (one size per image)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    x_max = np.asarray(width, dtype=np.float64) - 1
    y_max = np.asarray(height, dtype=np.float64) - 1
    return np.stack([np.clip(boxes[..., 0], 0, x_max), np.clip(boxes[..., 1], 0, y_max),
                     np.clip(boxes[..., 2], 0, x_max), np.clip(boxes[..., 3], 0, y_max)], axis=-1)
