"""Multi-head attention: plain (SA, GA) and relation-aware (RSA).

Both project with Linear(H -> H) q, k, v and merge; scores are q.k / sqrt(head width);
masked keys are *set* to -1e9 (masked_fill, as the reference does) before the softmax, and
dropout is applied to the attention map.

`attention_record` is off (None) by default; models.mmnasnet.MMNasNet.forward_with_attention
sets it to a list for one forward pass, and each pass then appends its map (before dropout).
"""
import math

import paddle
import paddle.nn as nn

from .fast import Dropout, Linear, masked_softmax


class MHAtt(nn.Layer):
    def __init__(self, hidden_size: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_width = hidden_size // heads
        self.linear_v = Linear(hidden_size, hidden_size)
        self.linear_k = Linear(hidden_size, hidden_size)
        self.linear_q = Linear(hidden_size, hidden_size)
        self.linear_merge = Linear(hidden_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.attention_record = None  # a list while attention is being recorded, else None

    def split_heads(self, x):
        """[B, N, H] -> [B, heads, N, head_width]"""
        return x.reshape([0, 0, self.heads, self.head_width]).transpose([0, 2, 1, 3])

    def attend(self, v, k, q, mask, score_bias=None):
        """v, k: [B, Nk, H]; q: [B, Nq, H]; mask: bool [B, 1, 1, Nk]; score_bias: [B, heads, Nq, Nk]."""
        v = self.split_heads(self.linear_v(v))
        k = self.split_heads(self.linear_k(k))
        q = self.split_heads(self.linear_q(q))
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(self.head_width)  # [B, h, Nq, Nk]
        if score_bias is not None:
            scores = scores + score_bias
        att_map = masked_softmax(scores, mask)  # masked keys set to -1e9 first
        if self.attention_record is not None:
            self.attention_record.append(att_map)
        att_map = self.dropout(att_map)
        atted = paddle.matmul(att_map, v)  # [B, h, Nq, head_width]
        atted = atted.transpose([0, 2, 1, 3]).reshape([0, 0, self.heads * self.head_width])
        return self.linear_merge(atted)

    def forward(self, v, k, q, mask=None):
        return self.attend(v, k, q, mask)


class RelMHAtt(MHAtt):
    """Self attention whose heads (H / rel_head_width of them) add log(max(r, 1e-6)) to their
    scores, r = ReLU(linear_r(relation embedding)): see ops.relation.BoxRelations."""

    def __init__(self, hidden_size: int, rel_head_width: int, rel_size: int, dropout: float):
        super().__init__(hidden_size, hidden_size // rel_head_width, dropout)
        self.linear_r = Linear(rel_size, self.heads)

    def forward(self, v, k, q, mask=None, relations=None):
        return self.attend(v, k, q, mask, score_bias=relations.score_bias(self.linear_r))
