"""The MMnas visual grounding network (MILVLG/mmnas mmnas/model/full_vgd.py `Net_Full`) in
PyTorch, forward only, written here from the spec (shared/spec/grounding_matching.md 0.1, 1.2)
with the reference's parameter names, so its random state dict is what a released VGD
checkpoint looks like: imgfeat_linear, backnone.cells_{enc,dec}.0.dag.<i>.0.{mhatt,mlp,ln},
linear_y_rel, attflat_x, attfc_y, proj_norm, proj_scores, proj_reg. Attention projections have
no bias. Eval mode only (no dropout). Used by tests/test_grounding_convert.py.

    net = TorchVGDNet(cfg, token_size)
    log_scores [B, N], deltas [B, N, 4] = net(region_feats [B, N, F], boxes [B, N, 4], token_ids [B, T])
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e9


class Norm(nn.Module):
    """a_2 * (x - mean) / (unbiased std + eps) + b_2"""

    def __init__(self, size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.a_2 = nn.Parameter(torch.ones(size))
        self.b_2 = nn.Parameter(torch.zeros(size))

    def forward(self, x):
        return self.a_2 * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + self.b_2


class Dense(nn.Module):
    """`fc.linear` + ReLU, then `linear`: the parameter paths of the reference's MLP."""

    def __init__(self, size_in, size_mid, size_out):
        super().__init__()
        self.fc = nn.Module()
        self.fc.linear = nn.Linear(size_in, size_mid)
        self.linear = nn.Linear(size_mid, size_out)

    def forward(self, x):
        return self.linear(F.relu(self.fc.linear(x)))


class Attention(nn.Module):
    def __init__(self, hidden, head_width, rel_size=None):
        super().__init__()
        self.heads, self.width = hidden // head_width, head_width
        self.linear_v = nn.Linear(hidden, hidden, bias=False)
        self.linear_k = nn.Linear(hidden, hidden, bias=False)
        self.linear_q = nn.Linear(hidden, hidden, bias=False)
        if rel_size is not None:
            self.linear_r = nn.Linear(rel_size, self.heads)
        self.linear_merge = nn.Linear(hidden, hidden, bias=False)

    def split(self, x):
        return x.view(x.shape[0], -1, self.heads, self.width).transpose(1, 2)  # [B, heads, n, width]

    def forward(self, v, k, q, mask, rel=None):
        v, k, q = self.split(self.linear_v(v)), self.split(self.linear_k(k)), self.split(self.linear_q(q))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.width)
        if rel is not None:
            scores = torch.log(torch.clamp(F.relu(self.linear_r(rel)).permute(0, 3, 1, 2), min=1e-6)) + scores
        att = torch.softmax(scores.masked_fill(mask, NEG), dim=-1)
        return self.linear_merge((att @ v).transpose(1, 2).reshape(q.shape[0], -1, self.heads * self.width))


class Op(nn.Module):
    """ln(s + f(s)) for f = SA, GA, RSA or FFN."""

    def __init__(self, kind, cfg):
        super().__init__()
        self.kind = kind
        if kind == "FFN":
            self.mlp = Dense(cfg.hidden_size, 4 * cfg.hidden_size, cfg.hidden_size)
        else:
            width = cfg.rel_head_width if kind == "RSA" else cfg.hidden_size // cfg.heads
            self.mhatt = Attention(cfg.hidden_size, width, cfg.rel_size if kind == "RSA" else None)
        self.ln = Norm(cfg.hidden_size)

    def forward(self, s, pre, s_mask, pre_mask, rel):
        if self.kind == "FFN":
            out = self.mlp(s)
        elif self.kind == "SA":
            out = self.mhatt(s, s, s, s_mask)
        elif self.kind == "GA":
            out = self.mhatt(pre, pre, s, pre_mask)
        else:
            out = self.mhatt(s, s, s, s_mask, rel)
        return self.ln(s + out)


def cell(kinds, cfg):
    c = nn.Module()
    c.dag = nn.ModuleList([nn.ModuleList([Op(kind, cfg)]) for kind in kinds])
    return c


class Pool(nn.Module):
    """AttFlat: masked softmax attention over positions, weighted sum, linear_merge."""

    def __init__(self, cfg):
        super().__init__()
        self.mlp = Dense(cfg.hidden_size, cfg.flat_mlp, cfg.glimpses)
        self.linear_merge = nn.Linear(cfg.hidden_size * cfg.glimpses, cfg.flat_out)

    def forward(self, x, mask):
        att = torch.softmax(self.mlp(x).masked_fill(mask.squeeze(1).squeeze(1).unsqueeze(2), NEG), dim=1)
        return self.linear_merge(torch.cat([(att[:, :, g:g + 1] * x).sum(1) for g in range(att.shape[2])], 1))


def relation_geometry(boxes):
    """boxes [B, N, 4] -> [B, N, N, 4]: log|dcx| / w_i, log|dcy| / h_i (floored at 1e-3), log w_i/w_j, log h_i/h_j."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy, w, h = (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1 + 1.0, y2 - y1 + 1.0
    dx = torch.log(torch.clamp(torch.abs((cx[:, :, None] - cx[:, None]) / w[:, :, None]), min=1e-3))
    dy = torch.log(torch.clamp(torch.abs((cy[:, :, None] - cy[:, None]) / h[:, :, None]), min=1e-3))
    return torch.stack([dx, dy, torch.log(w[:, :, None] / w[:, None]), torch.log(h[:, :, None] / h[:, None])], -1)


class TorchVGDNet(nn.Module):
    def __init__(self, cfg, token_size):
        super().__init__()
        self.embedding = nn.Embedding(token_size, cfg.word_embed)
        self.lstm = nn.LSTM(cfg.word_embed, cfg.hidden_size, num_layers=1, batch_first=True)
        self.imgfeat_linear = nn.Linear(cfg.feat_size, cfg.hidden_size)
        self.backnone = nn.Module()
        self.backnone.cells_enc = nn.ModuleList([cell(cfg.enc, cfg)])
        self.backnone.cells_dec = nn.ModuleList([cell(cfg.dec, cfg)])
        self.attflat_x = Pool(cfg)
        self.attfc_y = nn.Linear(cfg.hidden_size, cfg.flat_out)
        self.proj_norm = Norm(cfg.flat_out)
        self.proj_scores = nn.Linear(cfg.flat_out, 1)
        self.proj_reg = nn.Linear(cfg.flat_out, 4)
        self.linear_y_rel = nn.Linear(4, cfg.rel_size)

    def forward(self, region_feats, boxes, token_ids):
        x_mask = (token_ids == 0)[:, None, None, :]
        y_mask = (region_feats.abs().sum(-1) == 0)[:, None, None, :]
        x, _ = self.lstm(self.embedding(token_ids))
        y = self.imgfeat_linear(region_feats)
        rel = F.relu(self.linear_y_rel(relation_geometry(boxes)))
        for node in self.backnone.cells_enc[0].dag:
            x = node[0](x, None, x_mask, None, None)
        for node in self.backnone.cells_dec[0].dag:
            y = node[0](y, x, y_mask, x_mask, rel)
        z = self.proj_norm(self.attflat_x(x, x_mask).unsqueeze(1) + self.attfc_y(y))
        return F.log_softmax(self.proj_scores(z).squeeze(-1), dim=-1), self.proj_reg(z)
