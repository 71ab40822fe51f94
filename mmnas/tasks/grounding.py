"""The grounding task (RefCOCO, RefCOCO+, RefCOCOg; spec grounding_matching.md section 1): the
backbone reads the expression (encoder) and the regions (decoder); the head scores every region
and regresses its box (models/grounding_head.py); the loss is KL to the IoU-weighted positives plus
0.5 SmoothL1 on the normalised deltas (models/grounding_loss.py); the metric is accuracy at
IoU >= 0.5 of the top region's decoded, clipped box (metrics/grounding.py). The result file
holds one box per expression id, named after the dataset and split."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..metrics.grounding import decode_all_boxes, pick_boxes, pick_ious
from ..metrics.boxes import POSITIVE_IOU
from ..models.flops import grounding_head_flops
from ..models.grounding_head import GroundingSuperNet, MMNasForGrounding
from ..models.grounding_loss import grounding_loss
from .base import Task

RUNNERS_UP = 4  # regions kept after the chosen one (predict shows them; the result file keeps the first)


class GroundingTask(Task):
    name = "grounding"
    targets = ("score_target", "scores_mask", "delta_targets", "bbox_mask", "gt_box", "image_size")
    region_targets = ("score_target", "delta_targets", "bbox_mask")
    exportable = False  # two outputs: evaluated by the dygraph engine
    sample_noun = "expressions"
    result_noun = "boxes"
    pred_noun = "regions, scores and boxes of the top picks"
    loss_reduction = "mean"  # the reference's LOSS_AVG: averaged over the positives, not summed
    backbone_prefixes = ("embedding.", "lstm.", "adapter.", "backbone.", "linear_rel.")

    def build_model(self, cfg, vocab, word_vectors=None):
        return MMNasForGrounding(cfg, vocab.token_size, word_vectors)

    def build_supernet(self, cfg, search, vocab, word_vectors=None):
        return GroundingSuperNet(cfg, search, vocab.token_size, word_vectors)

    def loss(self, outputs, batch, run_cfg) -> Dict[str, object]:
        log_scores, deltas = outputs
        return grounding_loss(log_scores.astype("float32"), deltas.astype("float32"), batch["score_target"],
                              batch["scores_mask"], batch["delta_targets"], batch["bbox_mask"])

    def predict_outputs(self, outputs, batch) -> Dict[str, np.ndarray]:
        """The chosen region and RUNNERS_UP more, best first: their indices, probabilities and
        decoded, clipped boxes (pixels, xyxy)."""
        log_scores, deltas = (np.asarray(o) for o in outputs)
        keep = min(1 + RUNNERS_UP, log_scores.shape[1])
        regions = np.argsort(-log_scores, axis=1, kind="stable")[:, :keep]  # [B, K]
        rows = np.arange(len(regions))[:, None]
        boxes = decode_all_boxes(deltas[rows, regions], _numpy(batch["boxes"])[rows, regions],
                                 _numpy(batch["image_size"]))  # [B, K, 4]
        return {"regions": regions.astype(np.int64), "region_scores": np.exp(log_scores[rows, regions]),
                "boxes": boxes.astype(np.float64)}

    def result_file(self, name: str, dataset) -> str:
        return f"result_run_{name}_{dataset.dataset}_{dataset.split}.json"

    def result_entries(self, dataset, outputs):
        return dataset.result_entries(outputs["boxes"][:, 0], outputs["regions"][:, 0])

    def scalars(self, scores: dict) -> Dict[str, float]:
        return {"overall": scores["overall"], "mean_iou": scores["mean_iou"], "mean_iou_hits": scores["mean_iou_hits"]}

    def search_score(self, outputs, batch) -> float:
        """Hits at IoU >= 0.5 of the top region's decoded box."""
        log_scores, deltas = (o.numpy() for o in outputs)
        _, boxes = pick_boxes(log_scores, deltas, _numpy(batch["boxes"]), _numpy(batch["image_size"]))
        return float((pick_ious(boxes, _numpy(batch["gt_box"])) >= POSITIVE_IOU).sum())

    def head_flops(self, cfg, dataset_name: str, n: int, tokens: int) -> float:
        return grounding_head_flops(cfg, n, tokens)


def _numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
