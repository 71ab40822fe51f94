"""The visual grounding head of MMnas (the reference's full_vgd.py, spec section 1.2), on the
shared backbone's outputs: the text is pooled to one vector, every region is projected to the
same width and added to it, and each sum gives a score (which region the expression means) and
four box deltas (how to move that region's proposal onto the object).

    t = attflat_lang(lang)                    [B, 1, flat_out]
    z = proj_norm(t + attfc_img(img))         [B, N, flat_out]
    log_scores = log_softmax(proj_scores(z))  [B, N]   (padded regions get ~0 probability)
    deltas = proj_reg(z)                      [B, N, 4] (normalised units: x DELTA_STDS to decode)

Parameter names follow the answer head's (attflat_lang, proj_norm) and, for the new layers, the
reference's (attfc_y -> attfc_img, proj_scores, proj_reg), so a MILVLG/mmnas VGD checkpoint
converts name by name (models/grounding_convert.py).

MMNasForGrounding is the grounding task's model (tasks/grounding.py): the shared backbone
(MMNasBase) with this head under `head.`; GroundingSuperNet its search supernet.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

from ..config import ModelConfig, SearchConfig
from ..ops import LayerNorm
from ..ops.fast import Linear, mask_fill
from .mmnasnet import AttFlat, MMNasBase, init_like_reference
from .supernet import Searchable, stub_config


class GroundingHead(nn.Layer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attflat_lang = AttFlat(cfg)
        self.attfc_img = Linear(cfg.hidden_size, cfg.flat_out)
        self.proj_norm = LayerNorm(cfg.flat_out)
        self.proj_scores = Linear(cfg.flat_out, 1)
        self.proj_reg = Linear(cfg.flat_out, 4)
        init_like_reference(self)

    def forward(self, lang, lang_mask, img, img_mask):
        """lang [B, T, H], lang_mask bool [B, 1, 1, T], img [B, N, H], img_mask bool [B, 1, 1, N]
        -> (log_scores [B, N], deltas [B, N, 4])."""
        text = self.attflat_lang(lang, lang_mask).unsqueeze(1)  # [B, 1, flat_out]
        fused = self.proj_norm(text + self.attfc_img(img))  # [B, N, flat_out]
        scores = self.proj_scores(fused).squeeze(-1)  # [B, N]
        padded = img_mask.reshape([img_mask.shape[0], -1])  # [B, 1, 1, N] -> [B, N]
        scores = paddle.where(padded, paddle.full([1], mask_fill(scores.dtype), scores.dtype), scores)
        # x - logsumexp(x), not F.log_softmax: Paddle's CPU kernel floors log-probabilities near -65
        # (exp(-65) ~ 1e-28, not 0), the reference's are -1e9 at padding
        return scores - paddle.logsumexp(scores, axis=-1, keepdim=True), self.proj_reg(fused)


class MMNasForGrounding(MMNasBase):
    """The grounding task's model: the shared backbone (MMNasBase; the answer model's parameter
    names, so a VQA checkpoint's backbone loads) with the GroundingHead under `head.`.
    forward(region_feats [B,N,F], grid_feats (unused), boxes [B,N,4], token_ids [B,T])
    -> (log_scores [B, N] (log-softmax over the regions), deltas [B, N, 4] (normalised units))."""

    def __init__(self, cfg: ModelConfig, token_size: int, word_vectors=None):
        super().__init__(cfg, token_size)
        self.head = GroundingHead(cfg)
        self.finish_init(word_vectors)

    def forward(self, region_feats, grid_feats, boxes, token_ids):
        lang, img, lang_mask, img_mask = self.encode(region_feats, boxes, token_ids)
        return self.head(lang, lang_mask, img, img_mask)


class GroundingNet(MMNasForGrounding):
    """The whole VGD network of the reference (full_vgd.py): the task model without the unused
    grid-feature input, for checkpoint conversion and small scripts.

        log_scores [B, N], deltas [B, N, 4] = net(region_feats [B, N, F], boxes [B, N, 4], token_ids [B, T])
    """

    def forward(self, region_feats, boxes, token_ids):
        return super().forward(region_feats, None, boxes, token_ids)


class GroundingSuperNet(Searchable, MMNasForGrounding):
    """The grounding model with a SuperBackbone (models/supernet.py), for --RUN=search."""

    def __init__(self, cfg: ModelConfig, search: SearchConfig, token_size: int, word_vectors=None):
        search.validate()
        MMNasForGrounding.__init__(self, stub_config(cfg), token_size, word_vectors)
        self.make_searchable(cfg, search)
