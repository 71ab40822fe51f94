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


def attflat_flops(cfg, positions: int) -> float:
    """AttFlat pooling of `positions` rows: its MLP, the weighted sums and linear_merge."""
    H, G = cfg.hidden_size, cfg.glimpses
    return (_lin(positions, H, cfg.flat_mlp) + _lin(positions, cfg.flat_mlp, G)
            + 2.0 * G * positions * H + _lin(1, H * G, cfg.flat_out))


def answer_head_flops(cfg, n: int, tokens: int, answer_size: int = VQA_ANSWERS) -> float:
    """The answer head: AttFlat over the tokens and over the regions, then proj."""
    return attflat_flops(cfg, tokens) + attflat_flops(cfg, n) + _lin(1, cfg.flat_out, answer_size)


def forward_flops(cfg, n: int, tokens: Optional[int] = None, answer_size: int = VQA_ANSWERS,
                  head_flops: Optional[float] = None) -> Dict[str, float]:
    """Forward FLOPs of one sample with n regions and `tokens` question tokens (default
    cfg.max_token, the length every question is padded or cut to), in parts: 'adapter'
    (region features -> hidden), 'rel' (box geometry -> relation embedding), 'other'.
    The head is the answer head over `answer_size` answers unless `head_flops` gives another
    task's head (mmnas/tasks/: Task.head_flops)."""
    H, T, E = cfg.hidden_size, tokens or cfg.max_token, cfg.word_embed
    other = T * (_lin(1, E, 4 * H) + _lin(1, H, 4 * H))  # LSTM
    for op in cfg.enc:  # language stream: T positions, the image (n) is the other stream
        other += op_flops(op, cfg, T, n)
    for op in cfg.dec:  # image stream: n positions, guided by the T tokens
        other += op_flops(op, cfg, n, T)
    if head_flops is None:
        for positions in (T, n):  # AttFlat lang, img (added one by one, as the totals were always summed)
            other += attflat_flops(cfg, positions)
        other += _lin(1, cfg.flat_out, answer_size)
    else:
        other += head_flops
    return {"adapter": _lin(n, cfg.feat_size, H), "rel": _lin(n * n, 4, cfg.rel_size), "other": other}


def forward_gflops(cfg, n: int = 100, tokens: Optional[int] = None, answer_size: int = VQA_ANSWERS,
                   head_flops: Optional[float] = None) -> float:
    """Total forward GFLOPs of one sample (default: n = 100 regions, cfg.max_token tokens, VQA-v2 answers)."""
    return sum(forward_flops(cfg, n, tokens, answer_size, head_flops).values()) / 1e9


def grounding_head_flops(cfg, n: int, tokens: int) -> float:
    """The grounding head: AttFlat over the tokens, per region Linear(H -> flat_out), then the
    score Linear(flat_out -> 1) and the delta Linear(flat_out -> 4) of every region."""
    return (attflat_flops(cfg, tokens) + _lin(n, cfg.hidden_size, cfg.flat_out)
            + _lin(n, cfg.flat_out, 1) + _lin(n, cfg.flat_out, 4))
