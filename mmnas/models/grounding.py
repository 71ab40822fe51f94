"""The grounding model: the shared backbone (MMNasBase) with the grounding head
(grounding_head.py) under `head.`, and its search supernet. PaddleNLP's `...For<Task>` shape:
the backbone's parameter names are the answer model's, so a VQA checkpoint's backbone loads into
it (engine/checkpoint.py, load_pretrained)."""
from __future__ import annotations

from ..config import ModelConfig, SearchConfig
from .grounding_head import GroundingHead
from .mmnasnet import MMNasBase
from .supernet import Searchable, stub_config


class MMNasForGrounding(MMNasBase):
    """forward(region_feats [B,N,F], grid_feats (unused), boxes [B,N,4], token_ids [B,T])
    -> (log_scores [B, N] (log-softmax over the regions), deltas [B, N, 4] (normalised units))."""

    def __init__(self, cfg: ModelConfig, token_size: int, word_vectors=None):
        super().__init__(cfg, token_size)
        self.head = GroundingHead(cfg)
        self.finish_init(word_vectors)

    def forward(self, region_feats, grid_feats, boxes, token_ids):
        lang, img, lang_mask, img_mask = self.encode(region_feats, boxes, token_ids)
        return self.head(lang, lang_mask, img, img_mask)


class GroundingSuperNet(Searchable, MMNasForGrounding):
    """The grounding model with a SuperBackbone (models/supernet.py)."""

    def __init__(self, cfg: ModelConfig, search: SearchConfig, token_size: int, word_vectors=None):
        search.validate()
        MMNasForGrounding.__init__(self, stub_config(cfg), token_size, word_vectors)
        self.make_searchable(cfg, search)
