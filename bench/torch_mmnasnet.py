"""MMNasNet in PyTorch, forward only (eval mode: no dropout), for bench/eval.py: the same
network as mmnas/models/mmnasnet.py written from the spec (shared/spec/README.md), with the
parameter names of the PyTorch release, so a Paddle state dict loads through
mmnas.models.convert.paddle_to_torch_state. Plain PyTorch ops, as a PyTorch user would run it.

    net = TorchMMNasNet(cfg, token_size, answer_size); load_paddle_weights(net, paddle_model)
    logits = net(region_feats [B, N, 2048], boxes [B, N, 4], question_ids [B, 14])  # [B, A]
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e9  # masked scores are set to this before a softmax


class LayerNorm(nn.Module):
    """a_2 * (x - mean) / (unbiased std + eps) + b_2: not torch's LayerNorm (biased variance,
    eps inside the square root)."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.a_2 = nn.Parameter(torch.ones(size))
        self.b_2 = nn.Parameter(torch.zeros(size))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # unbiased
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


class FC(nn.Module):
    def __init__(self, size_in: int, size_out: int):
        super().__init__()
        self.linear = nn.Linear(size_in, size_out)

    def forward(self, x):
        return F.relu(self.linear(x))


class MLP(nn.Module):
    def __init__(self, size_in: int, size_mid: int, size_out: int):
        super().__init__()
        self.fc = FC(size_in, size_mid)
        self.linear = nn.Linear(size_mid, size_out)

    def forward(self, x):
        return self.linear(self.fc(x))


class MHAtt(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.width = heads, hidden // heads
        self.linear_v = nn.Linear(hidden, hidden)
        self.linear_k = nn.Linear(hidden, hidden)
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_merge = nn.Linear(hidden, hidden)

    def heads_of(self, x):
        """[B, N, H] -> [B, heads, N, width]"""
        return x.view(x.shape[0], -1, self.heads, self.width).transpose(1, 2)

    def forward(self, v, k, q, mask, bias=None):
        v, k, q = self.heads_of(self.linear_v(v)), self.heads_of(self.linear_k(k)), self.heads_of(self.linear_q(q))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.width)  # [B, heads, Nq, Nk]
        if bias is not None:
            scores = scores + bias
        att = torch.softmax(scores.masked_fill(mask, NEG), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(q.shape[0], -1, self.heads * self.width)
        return self.linear_merge(out)


class RelMHAtt(MHAtt):
    def __init__(self, hidden: int, rel_width: int, rel_size: int):
        super().__init__(hidden, hidden // rel_width)
        self.linear_r = nn.Linear(rel_size, self.heads)

    def forward(self, v, k, q, mask, relation=None):
        bias = torch.log(torch.clamp(F.relu(self.linear_r(relation)), min=1e-6)).permute(0, 3, 1, 2)
        return super().forward(v, k, q, mask, bias)


class Block(nn.Module):
    """LN(x + f(x)) for f in SA, GA, RSA, FFN."""

    def __init__(self, op: str, cfg):
        super().__init__()
        self.op = op
        H = cfg.hidden_size
        if op == "FFN":
            self.mlp = MLP(H, cfg.ffn_hidden, H)
        elif op == "RSA":
            self.mhatt = RelMHAtt(H, cfg.rel_head_width, cfg.rel_size)
        else:
            self.mhatt = MHAtt(H, cfg.heads)
        self.norm = LayerNorm(H)

    def forward(self, x, y, x_mask, y_mask, relation):
        if self.op == "FFN":
            fx = self.mlp(x)
        elif self.op == "SA":
            fx = self.mhatt(x, x, x, x_mask)
        elif self.op == "GA":
            fx = self.mhatt(y, y, x, y_mask)
        else:
            fx = self.mhatt(x, x, x, x_mask, relation)
        return self.norm(x + fx)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.enc_list = nn.ModuleList([Block(op, cfg) for op in cfg.enc])
        self.dec_list = nn.ModuleList([Block(op, cfg) for op in cfg.dec])


class AttFlat(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.mlp = MLP(cfg.hidden_size, cfg.flat_mlp, cfg.glimpses)
        self.linear_merge = nn.Linear(cfg.hidden_size * cfg.glimpses, cfg.flat_out)

    def forward(self, x, mask):
        att = self.mlp(x).masked_fill(mask.view(mask.shape[0], -1, 1), NEG)  # [B, N, G]
        att = torch.softmax(att, dim=1)
        pooled = att.transpose(1, 2) @ x  # [B, G, H]
        return self.linear_merge(pooled.flatten(1))


class Adapter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.frcn_linear = nn.Linear(cfg.feat_size, cfg.hidden_size)


def box_geometry(boxes):
    """[B, N, 4] boxes (x1, y1, x2, y2) -> [B, N, N, 4] pair geometry (spec, step 3)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1 + 1, y2 - y1 + 1
    dx = torch.log(torch.clamp(torch.abs((cx[:, :, None] - cx[:, None, :]) / w[:, :, None]), min=1e-3))
    dy = torch.log(torch.clamp(torch.abs((cy[:, :, None] - cy[:, None, :]) / h[:, :, None]), min=1e-3))
    dw = torch.log(w[:, :, None] / w[:, None, :])
    dh = torch.log(h[:, :, None] / h[:, None, :])
    return torch.stack([dx, dy, dw, dh], -1)


class TorchMMNasNet(nn.Module):
    def __init__(self, cfg, token_size: int, answer_size: int):
        super().__init__()
        self.embedding = nn.Embedding(token_size, cfg.word_embed)
        self.lstm = nn.LSTM(cfg.word_embed, cfg.hidden_size, num_layers=1, batch_first=True)
        self.adapter = Adapter(cfg)
        self.backbone = Backbone(cfg)
        self.linear_rel = nn.Linear(4, cfg.rel_size)
        self.attflat_img = AttFlat(cfg)
        self.attflat_lang = AttFlat(cfg)
        self.proj_norm = LayerNorm(cfg.flat_out)
        self.proj = nn.Linear(cfg.flat_out, answer_size)

    def forward(self, region_feats, boxes, question_ids):
        lang_mask = (question_ids == 0)[:, None, None, :]  # [B, 1, 1, T]
        img_mask = (region_feats.abs().sum(-1) == 0)[:, None, None, :]  # [B, 1, 1, N]
        lang, _ = self.lstm(self.embedding(question_ids))
        img = self.adapter.frcn_linear(region_feats)
        relation = F.relu(self.linear_rel(box_geometry(boxes)))  # [B, N, N, rel_size]
        for block in self.backbone.enc_list:
            lang = block(lang, None, lang_mask, None, None)
        for block in self.backbone.dec_list:
            img = block(img, lang, img_mask, lang_mask, relation)
        fused = self.attflat_lang(lang, lang_mask) + self.attflat_img(img, img_mask)
        return self.proj(self.proj_norm(fused))


def load_paddle_weights(net: TorchMMNasNet, paddle_model) -> TorchMMNasNet:
    """Copy a Paddle MMNasNet's weights (Linear [in, out] -> [out, in], LSTM aliases folded)."""
    from mmnas.models.convert import paddle_to_torch_state
    state = paddle_to_torch_state({k: v.numpy() for k, v in paddle_model.state_dict().items()})
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    return net.eval()
