"""The reference's ITM network (MILVLG/mmnas `full_itm.py` with `modules.py`) in PyTorch, written
from the spec (grounding_matching.md sections 0.1 and 2.2), forward only, with the reference's
parameter names, so its state_dict() is what a MILVLG/mmnas ITM checkpoint holds:

    embedding, lstm, imgfeat_linear, linear_y_rel,
    backnone.cells_{enc,dec}.0.dag.<node>.0.{mhatt.linear_{v,k,q,merge} (no bias), mhatt.linear_r,
                                             mlp.fc.linear, mlp.linear, ln.a_2, ln.b_2},
    attflat_x, attflat_y (mlp.fc.linear, mlp.linear, linear_merge), proj_norm, proj

Heads have width 64 (heads = d / 64), every block is LN(x + f(x)); the output is sigmoid(logit).
Used by tests/test_matching_convert.py to check models/matching_convert.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_WIDTH = 64


class LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.a_2 = nn.Parameter(torch.ones(size))
        self.b_2 = nn.Parameter(torch.zeros(size))

    def forward(self, x):
        return self.a_2 * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + self.b_2


class FC(nn.Module):
    def __init__(self, size_in: int, size_out: int):
        super().__init__()
        self.linear = nn.Linear(size_in, size_out)


class MLP(nn.Module):
    def __init__(self, size_in: int, size_mid: int, size_out: int):
        super().__init__()
        self.fc = FC(size_in, size_mid)
        self.linear = nn.Linear(size_mid, size_out)

    def forward(self, x):
        return self.linear(F.relu(self.fc.linear(x)))


class MHAtt(nn.Module):
    def __init__(self, d: int, rel_size: int = 0):
        super().__init__()
        self.heads = d // HEAD_WIDTH
        self.linear_v = nn.Linear(d, d, bias=False)
        self.linear_k = nn.Linear(d, d, bias=False)
        self.linear_q = nn.Linear(d, d, bias=False)
        if rel_size:
            self.linear_r = nn.Linear(rel_size, self.heads)
        self.linear_merge = nn.Linear(d, d, bias=False)

    def split(self, x):
        return x.view(x.shape[0], -1, self.heads, HEAD_WIDTH).transpose(1, 2)  # [B, h, N, 64]

    def forward(self, v, k, q, mask, rel=None):
        v, k, q = self.split(self.linear_v(v)), self.split(self.linear_k(k)), self.split(self.linear_q(q))
        scores = q @ k.transpose(-2, -1) / math.sqrt(HEAD_WIDTH)
        if rel is not None:
            scores = scores + torch.log(torch.clamp(F.relu(self.linear_r(rel)).permute(0, 3, 1, 2), min=1e-6))
        att = torch.softmax(scores.masked_fill(mask, -1e9), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(q.shape[0], -1, self.heads * HEAD_WIDTH)
        return self.linear_merge(out)


class Op(nn.Module):
    def __init__(self, name: str, d: int, rel_size: int):
        super().__init__()
        self.name = name
        if name == "FFN":
            self.mlp = MLP(d, 4 * d, d)
        else:
            self.mhatt = MHAtt(d, rel_size if name == "RSA" else 0)
        self.ln = LayerNorm(d)

    def forward(self, s, pre, s_mask, pre_mask, rel):
        if self.name == "FFN":
            fs = self.mlp(s)
        elif self.name == "SA":
            fs = self.mhatt(s, s, s, s_mask)
        elif self.name == "GA":
            fs = self.mhatt(pre, pre, s, pre_mask)
        else:
            fs = self.mhatt(s, s, s, s_mask, rel)
        return self.ln(s + fs)


class Cell(nn.Module):
    def __init__(self, ops, d: int, rel_size: int):
        super().__init__()
        self.dag = nn.ModuleList([nn.ModuleList([Op(name, d, rel_size)]) for name in ops])


class Backbone(nn.Module):
    def __init__(self, enc, dec, d: int, rel_size: int):
        super().__init__()
        self.cells_enc = nn.ModuleList([Cell(enc, d, rel_size)])
        self.cells_dec = nn.ModuleList([Cell(dec, d, rel_size)])


class AttFlat(nn.Module):
    def __init__(self, d: int, mlp: int, out: int):
        super().__init__()
        self.mlp = MLP(d, mlp, 1)
        self.linear_merge = nn.Linear(d, out)

    def forward(self, x, mask):
        att = torch.softmax(self.mlp(x).masked_fill(mask.view(mask.shape[0], -1, 1), -1e9), dim=1)  # [B, N, 1]
        return self.linear_merge((att * x).sum(1))


def relation_embedding(boxes):
    """[B, N, 4] xyxy pixel boxes -> [B, N, N, 4] (spec 0.1)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1 + 1, y2 - y1 + 1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx = torch.log(torch.clamp(torch.abs((cx[:, :, None] - cx[:, None, :]) / w[:, :, None]), min=1e-3))
    dy = torch.log(torch.clamp(torch.abs((cy[:, :, None] - cy[:, None, :]) / h[:, :, None]), min=1e-3))
    return torch.stack([dx, dy, torch.log(w[:, :, None] / w[:, None, :]), torch.log(h[:, :, None] / h[:, None, :])], -1)


class ReferenceITM(nn.Module):
    def __init__(self, token_size: int, enc, dec, d: int = 512, word_embed: int = 300, feat_size: int = 2048,
                 rel_size: int = 64, flat_mlp: int = 512, flat_out: int = 1024):
        super().__init__()
        self.embedding = nn.Embedding(token_size, word_embed)
        self.lstm = nn.LSTM(word_embed, d, num_layers=1, batch_first=True)
        self.imgfeat_linear = nn.Linear(feat_size, d)
        self.linear_y_rel = nn.Linear(4, rel_size)
        self.backnone = Backbone(enc, dec, d, rel_size)
        self.attflat_x = AttFlat(d, flat_mlp, flat_out)
        self.attflat_y = AttFlat(d, flat_mlp, flat_out)
        self.proj_norm = LayerNorm(flat_out)
        self.proj = nn.Linear(flat_out, 1)

    def forward(self, region_feats, boxes, caption_ids):
        """-> (match probability [B], logit [B])"""
        x_mask = (caption_ids == 0)[:, None, None, :]
        y_mask = (region_feats.abs().sum(-1) == 0)[:, None, None, :]
        x, _ = self.lstm(self.embedding(caption_ids))
        y = self.imgfeat_linear(region_feats)
        rel = F.relu(self.linear_y_rel(relation_embedding(boxes)))
        for (op,) in self.backnone.cells_enc[0].dag:
            x = op(x, None, x_mask, None, None)
        for (op,) in self.backnone.cells_dec[0].dag:
            y = op(y, x, y_mask, x_mask, rel)
        logit = self.proj(self.proj_norm(self.attflat_x(x, x_mask) + self.attflat_y(y, y_mask))).squeeze(-1)
        return torch.sigmoid(logit), logit
