"""Image-text matching: the reference's sigmoid matching head on the MMNasNet backbone.

    logit = Linear(flat_out -> 1)(LayerNorm(AttFlat_lang(lang) + AttFlat_img(img)))
    match probability s = sigmoid(logit)

The head returns the logit; the loss (matching_loss.py) applies the sigmoid, so it can pick the
reference's BCE on probabilities or the stable BCE-with-logits. Every (image, caption) pair
needs a full pass: the decoder's guided attention reads the caption (a cross-attention scorer,
no separate embeddings).

MatchingNet is the whole network with the backbone's parameter names of MMNasNet (embedding,
lstm, adapter.frcn_linear, linear_rel, backbone.enc_list / dec_list) and the head under `head.`
(attflat_lang, attflat_img, proj_norm, proj). models/matching_convert.py maps the reference's
names (`full_itm.py`) onto these.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn

from ..config import ModelConfig, SearchConfig
from ..ops import LayerNorm, make_mask, make_token_mask
from ..ops.fast import Linear
from .mmnasnet import AttFlat, MMNasBase
from .supernet import Searchable, stub_config


class MatchingHead(nn.Layer):
    """(lang [B, T, H], lang_mask, img [B, N, H], img_mask) -> matching logits [B]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attflat_lang = AttFlat(cfg)
        self.attflat_img = AttFlat(cfg)
        self.proj_norm = LayerNorm(cfg.flat_out)
        self.proj = Linear(cfg.flat_out, 1)

    def score(self, lang_pooled, img_pooled):
        """Logits from pooled summaries [..., flat_out] (broadcasting: [C, 1, F] + [1, I, F] scores all pairs)."""
        return self.proj(self.proj_norm(lang_pooled + img_pooled)).squeeze(-1)

    def forward(self, lang, lang_mask, img, img_mask):
        return self.score(self.attflat_lang(lang, lang_mask), self.attflat_img(img, img_mask))


class MatchingNet(MMNasBase):
    """forward(region_feats [B, N, feat_size], boxes [B, N, 4], caption_ids [B, T]) -> logits [B].
    Zero rows of region_feats and zero ids are padding. The shared backbone (MMNasBase) with the
    matching head under `head.`; a VQA checkpoint's backbone loads into it (--CKPT_PATH)."""

    def __init__(self, cfg: ModelConfig, token_size: int, word_vectors=None):
        super().__init__(cfg, token_size)
        self.head = MatchingHead(cfg)
        self.finish_init(word_vectors)

    def encode_caption(self, caption_ids):
        """The encoder's caption stream (it never reads the image): lang [B, T, H], mask [B, 1, 1, T]."""
        lang_mask = make_token_mask(caption_ids)
        lang, _ = self.lstm(self.embedding(caption_ids))  # [B, T, H]
        for op in self.backbone.enc_list:
            lang = op(lang, None, lang_mask, None, None)
        return lang, lang_mask

    def forward(self, region_feats, boxes, caption_ids):
        lang, img, lang_mask, img_mask = self.encode(region_feats, boxes, caption_ids)
        return self.head(lang, lang_mask, img, img_mask)

    # ---- the cheap first stage of two-stage retrieval (engine-free, see models/matching_eval.py)

    def caption_summary(self, caption_ids):
        """[B, flat_out]: the head's caption pooling; exact, since the encoder is image-free."""
        lang, lang_mask = self.encode_caption(caption_ids)
        return self.head.attflat_lang(lang, lang_mask)

    def image_summary(self, region_feats):
        """[B, flat_out]: the head's image pooling of the projected regions with the decoder
        skipped (the decoder needs the caption); an approximation for a first ranking only."""
        return self.head.attflat_img(self.adapter(region_feats), make_mask(region_feats))


class MatchingSuperNet(Searchable, MatchingNet):
    """The matching model with a SuperBackbone (models/supernet.py): the search on matching."""

    def __init__(self, cfg: ModelConfig, search: SearchConfig, token_size: int, word_vectors=None):
        search.validate()
        MatchingNet.__init__(self, stub_config(cfg), token_size, word_vectors)
        self.make_searchable(cfg, search)


# ---- numpy callables for data/flickr_mining.py and data/flickr_scoring.py (which import no model)

def _in_eval(net: MatchingNet, fn):
    """fn on numpy arrays -> numpy, run in eval mode without gradients (the mode is restored)."""
    def wrapped(*arrays):
        was_training = net.training
        net.eval()
        try:
            with paddle.no_grad():
                return fn(*[paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays]).numpy()
        finally:
            if was_training:
                net.train()
    return wrapped


def pair_scorer(net: MatchingNet):
    """batch dict (collate_pairs) -> logits float32 [B]."""
    forward = _in_eval(net, net)
    return lambda batch: forward(batch["region_feats"], batch["boxes"], batch["caption_ids"])


def first_stage(net: MatchingNet):
    """(caption_summary(caption_ids), image_summary(region_feats), summary_score(images [I, F],
    captions [C, F]) -> [I, C]) for flickr_scoring.cheap_score_matrix."""
    # [I, 1, F] + [1, C, F] -> [I, C]
    return (_in_eval(net, net.caption_summary), _in_eval(net, net.image_summary),
            _in_eval(net, lambda images, captions: net.head.score(images.unsqueeze(1), captions.unsqueeze(0))))
