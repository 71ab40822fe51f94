"""The FLOP budget of a search: what each candidate costs, the expected cost, the genotype
that fits.

Costs are forward GFLOPs of one sample at n = 100 regions, at the width of the model the
genotype will be trained at (`search.target_model`, a --MODEL name or YAML path: its hidden
size, heads, FFN and relation widths, and its model.max_token tokens: 14 for VQA-v2), counted by mmnas/models/flops.py from the op
registry. A genotype's GFLOPs are those of that whole model (LSTM, adapter, heads included);
the searched positions are the part that varies.

- `expected_gflops`: E[C] = sum over positions of sum_k p_k c_k with p = softmax(alpha), the
  SNAS resource constraint / ProxylessNAS expected-latency loss, differentiable in alpha.
- `fit_budget`: the most probable genotype (largest sum of log p over positions) whose GFLOPs
  are within the budget, found exactly by a dynamic programme over positions that keeps only
  the Pareto front of (cost, log-probability) of partial choices.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..config import ConfigError, ModelConfig, load_config
from ..models.flops import forward_gflops
from ..ops.registry import op_flops

BUDGET_REGIONS = 100  # the budget is stated per sample at n = 100 regions
PARTS = ("enc", "dec")


@dataclass
class PositionCosts:
    """GFLOPs of every candidate at every position, plus the fixed rest of the target model."""
    target: ModelConfig
    ops: Dict[str, List[List[str]]]  # part -> per position, candidate names
    gflops: Dict[str, List[np.ndarray]]  # part -> per position, GFLOPs per candidate
    fixed_gflops: float  # everything outside the searched positions
    head_flops: Optional[float] = None  # the task's head at n = 100 (None: the VQA-v2 answer head)

    def positions(self):
        """(part, index, ops, costs) of every position, encoder first."""
        for part in PARTS:
            for i, (ops, costs) in enumerate(zip(self.ops[part], self.gflops[part])):
                yield part, i, ops, costs

    def choice_gflops(self, choices: Dict[str, Sequence[str]]) -> float:
        """GFLOPs of the target model with these choices (op names, skip allowed)."""
        total = self.fixed_gflops
        for part, i, ops, costs in self.positions():
            total += costs[ops.index(choices[part][i])]
        return total

    def cheapest_gflops(self) -> float:
        return self.fixed_gflops + sum(float(costs.min()) for _, _, _, costs in self.positions())


def target_model_config(name: str) -> ModelConfig:
    """The ModelConfig of `search.target_model` (a --MODEL name or YAML path)."""
    try:
        return load_config(name).model
    except ConfigError as e:
        raise ConfigError(f"search.target_model: {e}") from None


def position_costs(target: ModelConfig, pools: Dict[str, List[List[str]]],
                   head_flops: Optional[float] = None) -> PositionCosts:
    """Per-candidate GFLOPs for the search pools at the target width (n = 100, its model.max_token
    tokens); `head_flops`: the task's head (Task.head_flops), None for the VQA-v2 answer head."""
    n, T = BUDGET_REGIONS, target.max_token
    own_other = {"enc": (T, n), "dec": (n, T)}  # (length of the op's stream, of the other one)
    gflops = {part: [np.array([op_flops(op, target, *own_other[part]) / 1e9 for op in pool])
                     for pool in pools[part]] for part in PARTS}
    empty = copy.deepcopy(target)
    empty.enc, empty.dec = [], []
    return PositionCosts(target, {p: [list(pool) for pool in pools[p]] for p in PARTS}, gflops,
                         forward_gflops(empty, n=n, tokens=T, head_flops=head_flops), head_flops)


def genotype_gflops(target: ModelConfig, genotype: Dict[str, Sequence[str]],
                    head_flops: Optional[float] = None) -> float:
    """Forward GFLOPs per sample at n = 100 of the target model with this genotype (and this
    head, see position_costs)."""
    cfg = copy.deepcopy(target)
    cfg.enc, cfg.dec = list(genotype["enc"]), list(genotype["dec"])
    return forward_gflops(cfg, n=BUDGET_REGIONS, head_flops=head_flops)  # at the target's model.max_token tokens


def expected_gflops(alphas: Sequence, costs: PositionCosts):
    """E[C] = sum_i sum_k softmax(alpha_i)_k c_ik as a Paddle scalar, differentiable in alpha
    (alphas in the order of costs.positions(): encoder positions, then decoder)."""
    import paddle
    import paddle.nn.functional as F
    terms = [(F.softmax(alpha) * paddle.to_tensor(c.astype("float32"))).sum()
             for alpha, (_, _, _, c) in zip(alphas, costs.positions(), strict=True)]
    return paddle.add_n(terms) + costs.fixed_gflops


def check_feasible(budget: float, costs: PositionCosts) -> None:
    cheapest = costs.cheapest_gflops()
    if budget < cheapest:
        raise ConfigError(f"search.budget_gflops={budget} is below the cheapest genotype of this search space "
                          f"({cheapest:.3f} GFLOPs at the width of search.target_model); raise the budget or "
                          f"add cheaper ops (e.g. skip) to the pools.")


def fit_budget(probs: Dict[str, List[Sequence[float]]], costs: PositionCosts,
               budget: Optional[float]) -> Dict[str, List[str]]:
    """The most probable choices (op names per position) within `budget` GFLOPs; the argmax
    choices when they fit or when there is no budget. Exact: a DP over positions keeping the
    Pareto front of partial choices (cheaper, or more probable, than every other kept)."""
    argmax = {part: [ops[int(np.argmax(probs[part][i]))] for i, ops in enumerate(costs.ops[part])] for part in PARTS}
    if budget is None or costs.choice_gflops(argmax) <= budget:
        return argmax
    check_feasible(budget, costs)
    positions = list(costs.positions())
    # the cheapest completion of positions i.. : prunes partial choices that cannot fit
    rest = np.concatenate([np.cumsum([c.min() for *_, c in positions][::-1])[::-1], [0.0]])
    front_cost, front_logp = np.array([costs.fixed_gflops]), np.array([0.0])
    parents: List[np.ndarray] = []  # per position: for each front entry, (previous entry, op index)
    for i, (part, j, ops, c) in enumerate(positions):
        logp = np.log(np.maximum(np.asarray(probs[part][j], dtype=np.float64), 1e-300))
        cost = (front_cost[:, None] + c[None, :]).ravel()  # [front x ops]
        value = (front_logp[:, None] + logp[None, :]).ravel()
        keep = np.nonzero(cost + rest[i + 1] <= budget)[0]
        order = keep[np.lexsort((-value[keep], cost[keep]))]  # by cost, then most probable first
        best = np.maximum.accumulate(value[order])
        pareto = order[np.concatenate([[True], value[order][1:] > best[:-1]])]
        front_cost, front_logp = cost[pareto], value[pareto]
        parents.append(np.stack([pareto // len(ops), pareto % len(ops)], 1))
    entry = int(np.argmax(front_logp))
    picks = []
    for (part, j, ops, _), parent in zip(reversed(positions), reversed(parents)):
        entry, k = int(parent[entry][0]), int(parent[entry][1])
        picks.append((part, j, ops[k]))
    chosen = {part: list(argmax[part]) for part in PARTS}
    for part, j, op in picks:
        chosen[part][j] = op
    return chosen
