"""Analytic forward FLOPs of one MMNasNet sample, the backbone's ops read from the op registry.

FLOPs count matrix products only (2 per multiply-add): every Linear, the LSTM's gate products,
attention scores and weighted sums, AttFlat pooling. Element-wise work (softmax, LayerNorm,
dropout, masks) is not counted. bench/ turns these into training FLOPs and FLOP/s; the search's
FLOP budget (mmnas/search/budget.py) compares genotypes with them.
"""
from __future__ import annotations

from typing import Dict, Optional

from ..ops.registry import op_flops

VQA_ANSWERS = 3129  # answers of the VQA-v2 dictionary (seen more than 8 times in train+val)


def _lin(rows, fan_in, fan_out):
    return 2.0 * rows * fan_in * fan_out


def forward_flops(cfg, n: int, tokens: Optional[int] = None, answer_size: int = VQA_ANSWERS) -> Dict[str, float]:
    """Forward FLOPs of one sample with n regions and `tokens` question tokens (default
    cfg.max_token, the length every question is padded or cut to), in parts: 'adapter'
    (region features -> hidden), 'rel' (box geometry -> relation embedding), 'other'."""
    H, T, E = cfg.hidden_size, tokens or cfg.max_token, cfg.word_embed
    other = T * (_lin(1, E, 4 * H) + _lin(1, H, 4 * H))  # LSTM
    for op in cfg.enc:  # language stream: T positions, the image (n) is the other stream
        other += op_flops(op, cfg, T, n)
    for op in cfg.dec:  # image stream: n positions, guided by the T tokens
        other += op_flops(op, cfg, n, T)
    G = cfg.glimpses
    for positions in (T, n):  # AttFlat lang, img
        other += _lin(positions, H, cfg.flat_mlp) + _lin(positions, cfg.flat_mlp, G)
        other += 2.0 * G * positions * H + _lin(1, H * G, cfg.flat_out)
    other += _lin(1, cfg.flat_out, answer_size)
    return {"adapter": _lin(n, cfg.feat_size, H), "rel": _lin(n * n, 4, cfg.rel_size), "other": other}


def forward_gflops(cfg, n: int = 100, tokens: Optional[int] = None, answer_size: int = VQA_ANSWERS) -> float:
    """Total forward GFLOPs of one sample (default: n = 100 regions, cfg.max_token tokens, VQA-v2 answers)."""
    return sum(forward_flops(cfg, n, tokens, answer_size).values()) / 1e9
