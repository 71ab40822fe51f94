"""The Flickr30K training split as the engine loads it (engine/train.py, engine/search.py).

An item is one training caption's triplet (data/flickr.py TripletDataset: the positive pair, a
negative caption, a negative image); `collate` stacks B items into a batch dict whose every
field has one row per caption, the three pairs on axis 1 in ROLES order (pos, negc, negi):

    region_feats [B, 3, N, feat_size], boxes [B, 3, N, 4], token_ids [B, 3, T],
    image_index [B, 3], caption_index [B, 3], index [B] (the caption)

so the engine's row cuts (accumulation, data-parallel shares) keep the triplets whole; the
matching task (tasks/matching.py) runs the 3B pairs in one pass.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from mmnas.data.flickr import ROLES, TripletDataset, collate_triplets


class TripletBatches(TripletDataset):
    @property
    def n_images(self) -> int:
        return self.dataset.n_images

    @property
    def box_counts(self) -> np.ndarray:
        """Regions of each caption's own image (the engine may sort a batch by them)."""
        return self.dataset.box_counts

    def image_path(self, c: int) -> str:  # what a failed read names (regions.FailureReportingDataset)
        return self.dataset.image_path(int(c))

    @staticmethod
    def collate(items) -> Dict[str, np.ndarray]:
        pairs = collate_triplets(items)  # 3B pairs, the roles in blocks of B
        b = int(pairs["batch_size"])

        def per_caption(x: np.ndarray) -> np.ndarray:  # [3B, ...] -> [3, B, ...] -> [B, 3, ...]
            return np.ascontiguousarray(x.reshape((len(ROLES), b) + x.shape[1:]).swapaxes(0, 1))

        return {"region_feats": per_caption(pairs["region_feats"]), "boxes": per_caption(pairs["boxes"]),
                "token_ids": per_caption(pairs["caption_ids"]), "image_index": per_caption(pairs["image_index"]),
                "caption_index": per_caption(pairs["caption_index"]), "index": pairs["caption_index"][:b].copy()}
