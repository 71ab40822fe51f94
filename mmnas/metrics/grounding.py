"""Visual grounding accuracy (RefCOCO / RefCOCO+ / RefCOCOg), as the MMnas reference scores it:
decode every region's box from the predicted (normalised) deltas, clip it to the image, take the
box of the highest-scoring region, and count a hit when its IoU with the ground truth is >= 0.5
(+1-pixel IoU; mmnas/metrics/boxes.py). No NMS, no score fusion.

The result file holds one entry per referring expression: {"expression_id", "box" [x1, y1, x2,
y2] in pixels, "region" (the picked proposal)}, so a run's predictions can be scored again, or
compared, without the model (`read_result_entries`, `score`).
"""
from __future__ import annotations

import json
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .boxes import POSITIVE_IOU, box_iou, clip_boxes, decode_deltas, denormalize_deltas


def decode_all_boxes(normalized_deltas, proposals, image_sizes) -> np.ndarray:
    """Every region's predicted box: deltas [B, N, 4] (the head's normalised units), proposals
    [B, N, 4] xyxy pixels, image_sizes [B, 2] (height, width) -> clipped boxes [B, N, 4]."""
    image_sizes = np.asarray(image_sizes, dtype=np.float64)
    boxes = decode_deltas(proposals, denormalize_deltas(normalized_deltas))
    return clip_boxes(boxes, image_sizes[:, 0:1], image_sizes[:, 1:2])  # sizes [B, 1] against [B, N]


def pick_boxes(log_scores, normalized_deltas, proposals, image_sizes) -> Tuple[np.ndarray, np.ndarray]:
    """(region index [B], its decoded, clipped box [B, 4]) of the highest score of each row of
    log_scores [B, N] (padded regions carry -inf or a very low score and are never picked)."""
    log_scores = np.asarray(log_scores)
    regions = np.argmax(log_scores, axis=1)  # [B]
    rows = np.arange(len(regions))
    boxes = decode_all_boxes(np.asarray(normalized_deltas)[rows, regions][:, None],
                             np.asarray(proposals)[rows, regions][:, None], image_sizes)[:, 0]
    return regions, boxes


def pick_ious(pred_boxes, gt_boxes) -> np.ndarray:
    """IoU [B] of each predicted box [B, 4] with its own ground truth [B, 4] (xyxy)."""
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return np.array([box_iou(p, g)[0, 0] for p, g in zip(pred_boxes, gt_boxes)], dtype=np.float64)


def result_entries(expression_ids: Sequence, boxes, regions) -> List[dict]:
    """The result file's entries: [{"expression_id", "box": [x1, y1, x2, y2], "region"}]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(expression_ids) == len(boxes) == len(regions):
        raise ValueError(f"{len(expression_ids)} expression ids, {len(boxes)} boxes and {len(regions)} regions")
    return [{"expression_id": eid, "box": [round(float(v), 2) for v in box], "region": int(region)}
            for eid, box, region in zip(expression_ids, boxes, regions)]


def read_result_entries(path: str) -> Dict[object, np.ndarray]:
    """A result file (JSON list of result_entries) -> {expression_id: box [4]}; ValueError naming
    the file and the entry when it is not one."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"grounding result file {path} cannot be read ({e}); it should be the JSON "
                         f"list a --RUN=val/test run writes") from None
    return boxes_by_id(entries, where=path)


def boxes_by_id(entries: Iterable[dict], where: str = "result entries") -> Dict[object, np.ndarray]:
    """[{"expression_id", "box"}] -> {expression_id: box [4]}; ValueError on a malformed or repeated entry."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{\"expression_id\", \"box\"}} entries, "
                         f"found {type(entries).__name__}")
    out: Dict[object, np.ndarray] = {}
    for i, entry in enumerate(entries):
        box = entry.get("box") if isinstance(entry, dict) else None
        if box is None or "expression_id" not in entry or np.shape(box) != (4,):
            raise ValueError(f"{where}: entry {i} is not {{\"expression_id\", \"box\": [x1, y1, x2, y2]}}: "
                             f"{str(entry)[:80]}")
        eid = entry["expression_id"]
        if eid in out:
            raise ValueError(f"{where}: expression {eid!r} appears twice (entries must be one per expression)")
        out[eid] = np.asarray(box, dtype=np.float64)
    return out


def score(entries: Sequence[dict], gt_boxes: Mapping[object, Sequence[float]],
          threshold: float = POSITIVE_IOU) -> dict:
    """Accuracy (%) of result entries against gt_boxes {expression_id: xyxy}: "overall" (hits /
    expressions x 100), "n_expressions", "hits", "mean_iou" (of every pick) and "mean_iou_hits"
    (of the hits only: how tight the correct boxes are). Every expression of gt_boxes must have an
    entry; entries for other ids are refused (they belong to another split)."""
    predicted = boxes_by_id(list(entries))
    missing = [eid for eid in gt_boxes if eid not in predicted]
    unknown = [eid for eid in predicted if eid not in gt_boxes]
    if missing or unknown:
        raise ValueError(f"result entries do not match the split: {len(missing)} expression(s) without a box "
                         f"(first {missing[:3]}), {len(unknown)} unknown expression id(s) (first {unknown[:3]})")
    ids = list(gt_boxes)
    ious = pick_ious(np.stack([predicted[eid] for eid in ids]) if ids else np.zeros((0, 4)),
                     np.stack([np.asarray(gt_boxes[eid], dtype=np.float64) for eid in ids]) if ids
                     else np.zeros((0, 4)))
    hits = ious >= threshold
    n = len(ids)
    return {"overall": 100.0 * float(hits.sum()) / n if n else 0.0, "n_expressions": n, "hits": int(hits.sum()),
            "mean_iou": float(ious.mean()) if n else 0.0,
            "mean_iou_hits": float(ious[hits].mean()) if hits.any() else 0.0}


def format_scores(scores: dict) -> str:
    """One line for the log."""
    return (f"accuracy@0.5 {scores['overall']:.2f} ({scores['hits']} of {scores['n_expressions']} expressions), "
            f"mean IoU {scores['mean_iou']:.3f}, of hits {scores['mean_iou_hits']:.3f}")


def format_split_table(scores_by_split: Mapping[str, dict], title: Optional[str] = None) -> str:
    """A per-split table, one row per split (e.g. refcoco val / testA / testB):

        split      expressions  acc@0.5  mean IoU
        val               1000    83.66     0.712
    """
    rows = [("split", "expressions", "acc@0.5", "mean IoU")]
    for split, s in scores_by_split.items():
        rows.append((split, str(s["n_expressions"]), f"{s['overall']:.2f}", f"{s['mean_iou']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [title] if title else []
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    return "\n".join(lines)
