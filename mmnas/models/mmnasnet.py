"""MMNasNet: question LSTM + image adapter, a genotype-built encoder/decoder, AttFlat heads.

Parameter names and shapes are exactly those of the released checkpoint
(`../shared/spec/state_dict_small.txt`), so its state dict loads without renaming.
"""
import math
from dataclasses import dataclass
from typing import List

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import ModelConfig
from ..ops import MLP, RSA, BoxRelations, LayerNorm, box_relation_geometry, build_op, make_mask, make_token_mask
from ..ops.fast import Linear, mask_fill


class Adapter(nn.Layer):
    """Projects region features to the hidden size (parameter path `adapter.frcn_linear`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.frcn_linear = Linear(cfg.feat_size, cfg.hidden_size)

    def forward(self, region_feats):
        return self.frcn_linear(region_feats)


class AttFlat(nn.Layer):
    """Attention pooling: an MLP scores each position per glimpse, masked softmax over
    positions, weighted sums concatenated over glimpses, then Linear(H*glimpses -> flat_out)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.glimpses = cfg.glimpses
        self.mlp = MLP(cfg.hidden_size, cfg.flat_mlp, cfg.glimpses, cfg.dropout)
        self.linear_merge = Linear(cfg.hidden_size * cfg.glimpses, cfg.flat_out)
        self.attention_record = None  # a list while attention is being recorded (see MMNasNet)

    def forward(self, x, x_mask):
        att = self.mlp(x)  # [B, N, G]
        mask = x_mask.squeeze([1, 2]).unsqueeze(2)  # [B,1,1,N] -> [B, N, 1]
        att = F.softmax(paddle.where(mask, paddle.full([1], mask_fill(att.dtype), att.dtype), att), axis=1)
        if self.attention_record is not None:
            self.attention_record.append(att)
        # sum_n att[b, n, g] * x[b, n, :] for every glimpse at once -> [B, G, H] -> [B, G*H]
        pooled = paddle.matmul(att, x, transpose_x=True)
        return self.linear_merge(pooled.reshape([0, -1]))


class Backbone(nn.Layer):
    """Encoder (language) then decoder (image), each a list of ops named by the genotype."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.enc_list = nn.LayerList([build_op(name, cfg) for name in cfg.enc])
        self.dec_list = nn.LayerList([build_op(name, cfg) for name in cfg.dec])

    def relation_layers(self):
        """The linear_r of every RSA block, in order (see ops.BoxRelations)."""
        return [op.mhatt.linear_r for op in self.dec_list if isinstance(op, RSA)]

    def forward(self, lang, img, lang_mask, img_mask, relations):
        for op in self.enc_list:
            lang = op(lang, None, lang_mask, None, None)
        for op in self.dec_list:
            img = op(img, lang, img_mask, lang_mask, relations)
        return lang, img


@dataclass
class BlockAttention:
    """The attention map of one SA/GA/RSA block: map [B, heads, Nq, Nk] (softmax over Nk).
    Encoder SA: tokens x tokens; decoder SA/RSA: regions x regions; GA: regions x tokens."""
    part: str  # "enc" or "dec"
    position: int  # index of the block in its genotype list
    op: str  # "SA", "GA" or "RSA"
    map: paddle.Tensor


@dataclass
class AttentionMaps:
    """What MMNasNet.forward_with_attention records: the AttFlat pooling weights over tokens
    [B, T, G] and regions [B, N, G] (masked positions get exactly 0), and every block's map."""
    lang: paddle.Tensor
    img: paddle.Tensor
    blocks: List[BlockAttention]


class MMNasBase(nn.Layer):
    """The backbone every task shares: word embedding, question LSTM, region adapter, box
    relation embedding and the genotype's encoder/decoder (parameter names `embedding`, `lstm`,
    `adapter.frcn_linear`, `backbone.*`, `linear_rel` at the top level, as in the released
    checkpoint). A task's model subclasses it and adds its head (PaddleNLP's `...For<Task>`),
    then calls `finish_init`: parameters are created trunk first, head second, then drawn."""

    def __init__(self, cfg: ModelConfig, token_size: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embedding = nn.Embedding(token_size, cfg.word_embed)
        self.lstm = nn.LSTM(cfg.word_embed, cfg.hidden_size, num_layers=1)
        self.adapter = Adapter(cfg)
        self.backbone = Backbone(cfg)
        self.linear_rel = Linear(4, cfg.rel_size)

    def finish_init(self, word_vectors=None) -> None:
        """Initialise like the reference, then put the word vectors (if any) in the embedding."""
        init_like_reference(self)
        if word_vectors is not None:
            token_size = self.embedding.weight.shape[0]
            word_vectors = np.asarray(word_vectors, dtype="float32")
            if word_vectors.shape != (token_size, self.cfg.word_embed):
                raise ValueError(f"word vectors have shape {word_vectors.shape}, the embedding "
                                 f"needs {(token_size, self.cfg.word_embed)}")
            self.embedding.weight.set_value(word_vectors)

    def encode(self, region_feats, boxes, question_ids):
        """(lang [B, T, H], img [B, N, H], lang_mask [B,1,1,T], img_mask [B,1,1,N]): the
        backbone's outputs, which every head reads."""
        lang_mask = make_token_mask(question_ids)  # [B, 1, 1, T]
        img_mask = make_mask(region_feats)  # [B, 1, 1, N]
        lang, _ = self.lstm(self.embedding(question_ids))  # [B, T, H]
        img = self.adapter(region_feats)  # [B, N, H]
        # once per batch, read by every RSA block: box geometry [B, N, N, 4] and linear_rel
        relations = BoxRelations(box_relation_geometry(boxes), self.linear_rel, self.backbone.relation_layers())
        lang, img = self.backbone(lang, img, lang_mask, img_mask, relations)
        return lang, img, lang_mask, img_mask


class MMNasNet(MMNasBase):
    """The answer model (VQA-v2, GQA): forward(region_feats [B,N,2048], grid_feats (unused),
    boxes [B,N,4], question_ids [B,14]) -> logits [B, A]. Zero rows of region_feats and zero
    ids are padding; N may be any <= 100."""

    def __init__(self, cfg: ModelConfig, token_size: int, answer_size: int, word_vectors=None):
        super().__init__(cfg, token_size)
        self.attflat_img = AttFlat(cfg)
        self.attflat_lang = AttFlat(cfg)
        self.proj_norm = LayerNorm(cfg.flat_out)
        self.proj = Linear(cfg.flat_out, answer_size)
        self.finish_init(word_vectors)

    def forward(self, region_feats, grid_feats, boxes, question_ids):
        lang, img, lang_mask, img_mask = self.encode(region_feats, boxes, question_ids)
        fused = self.attflat_lang(lang, lang_mask) + self.attflat_img(img, img_mask)
        return self.proj(self.proj_norm(fused))

    def forward_with_attention(self, region_feats, grid_feats, boxes, question_ids):
        """forward(), returning (logits, AttentionMaps). The layers record only during this call;
        forward() itself never records, so its logits and speed are those of the plain model."""
        blocks = [(part, i, op) for part, ops in (("enc", self.backbone.enc_list), ("dec", self.backbone.dec_list))
                  for i, op in enumerate(ops) if hasattr(op, "mhatt")]
        recorders = [op.mhatt for _, _, op in blocks] + [self.attflat_lang, self.attflat_img]
        for layer in recorders:
            layer.attention_record = []
        try:
            logits = self.forward(region_feats, grid_feats, boxes, question_ids)
            maps = AttentionMaps(
                lang=self.attflat_lang.attention_record[0], img=self.attflat_img.attention_record[0],
                blocks=[BlockAttention(part, i, type(op).__name__, op.mhatt.attention_record[0])
                        for part, i, op in blocks])
        finally:
            for layer in recorders:
                layer.attention_record = None
        return logits, maps


def init_like_reference(model: nn.Layer) -> None:
    """Initialise as the PyTorch reference does (its training recipe was tuned with it):
    Linear and LSTM U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (LSTM: 1/sqrt(H)), Embedding N(0, 1).
    Draws come from Paddle's global generator, so `paddle.seed` makes them reproducible."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.weight.shape[0])  # Paddle Linear weight is [in, out]
            for p in (layer.weight, layer.bias):
                p.set_value(paddle.uniform(p.shape, min=-bound, max=bound))
        elif isinstance(layer, nn.Embedding):
            layer.weight.set_value(paddle.randn(layer.weight.shape))
        elif isinstance(layer, nn.LSTM):
            bound = 1.0 / math.sqrt(layer.hidden_size)
            for p in layer.parameters():
                p.set_value(paddle.uniform(p.shape, min=-bound, max=bound))


def build_model(cfg: ModelConfig, token_size: int, answer_size: int, word_vectors=None) -> MMNasNet:
    return MMNasNet(cfg, token_size, answer_size, word_vectors)
