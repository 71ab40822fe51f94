"""The interface of a search strategy, and what every strategy shares.

The engine (engine/search.py) owns the run: data, epochs, checkpoints, reports. A strategy
owns the algorithm, through these methods:

- `partition(n)`: which questions feed weight steps and which architecture steps (or scoring);
- `arch_batches_per_epoch(epoch, steps)`, `phase(epoch)`: the epoch's shape;
- `build_optimizers(lr_base)`: the weights' Adam (the `train` section) and the logits' Adam
  (`search.arch_lr`, `arch_betas`, `arch_eps`, `arch_weight_decay`);
- `train_step(...)`: one step of the loop: sample (set every MixedOp's active candidate and
  mixing coefficients, see models/supernet.py), run the mixed output, take the architecture
  gradient and step(s); returns the losses;
- `choices()` / `genotype()`: the top op per position, within the FLOP budget if there is one;
- `report(at)`: what the epoch JSON adds for this strategy;
- `settings`: the search-section fields only this strategy reads (the epoch JSON lists the
  shared fields and these, not another strategy's); `arch_start_epoch()`: when the logits
  first move (after a warm-up, or from the first step).

A strategy is one file in this folder that registers its class with `@register_strategy("name")`;
`search.algorithm: name` in the search YAML selects it.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Type

import numpy as np
import paddle

from ..config import ConfigError, RunConfig
from ..models.supernet import Searchable, genotype_from_choices
from ..tasks import Task, task_of
from .budget import PositionCosts, expected_gflops, fit_budget

_STRATEGIES: Dict[str, Type["SearchStrategy"]] = {}


def register_strategy(name: str):
    """Class decorator: make a SearchStrategy subclass selectable as `search.algorithm: name`."""
    def declare(cls):
        cls.name = name
        _STRATEGIES[name] = cls
        return cls
    return declare


def strategy_names() -> List[str]:
    import mmnas.search as package
    for module in pkgutil.iter_modules(package.__path__):  # every file here may declare one
        importlib.import_module(f"{package.__name__}.{module.name}")
    return sorted(_STRATEGIES)


def strategy_class(name: str) -> Type["SearchStrategy"]:
    names = strategy_names()
    if name not in _STRATEGIES:
        raise ConfigError(f"search.algorithm={name!r} is not a search strategy; choose one of {names}")
    return _STRATEGIES[name]


def strategy_settings(name: str, search: dict) -> dict:
    """The search section (as a dict) as strategy `name` reads it: without the fields other
    strategies declare as their own."""
    others = {key for other in strategy_names() if other != name for key in _STRATEGIES[other].settings}
    return {key: value for key, value in search.items() if key not in others - set(strategy_class(name).settings)}


# ---- shared pieces -------------------------------------------------------------------------------

@dataclass
class Partition:
    weight: np.ndarray  # dataset indices for weight steps
    arch: np.ndarray  # dataset indices for architecture steps (or, without them, for scoring)


def partition_split(n: int, weight_fraction: float, seed: int) -> Partition:
    """Seeded partition of the n questions into the weight part and the arch part."""
    order = np.random.RandomState(seed).permutation(n)
    cut = int(round(n * weight_fraction))
    return Partition(np.sort(order[:cut]), np.sort(order[cut:]))


class StepAt(NamedTuple):
    """Where a step is in the run (epochs and steps counted from 0)."""
    epoch: int
    step: int
    steps: int  # per epoch
    epochs: int  # in the whole run

    @property
    def progress(self) -> float:
        """Fraction of the run done before this step, in [0, 1)."""
        return (self.epoch * self.steps + self.step) / (self.epochs * self.steps)


def sub_batches(batch, accu: int, task: Task):
    """(is_last, batch dict of the slice) for each of accu slices of a loaded batch."""
    batch = task.as_batch(batch)
    sub = batch["token_ids"].shape[0] // accu
    for a in range(accu):
        yield a == accu - 1, task.piece(batch, a * sub, (a + 1) * sub)


def batch_loss(net, task: Task, batch, cfg):
    """The task's summed loss of `net` on a batch dict."""
    return task.loss(task.forward(net, batch), batch, cfg)["loss"]


# ---- the interface -------------------------------------------------------------------------------

class SearchStrategy:
    name = ""
    needs_arch_part = False  # True: arch steps draw batches from Partition.arch
    settings: Tuple[str, ...] = ()  # search-section fields only this strategy reads

    def __init__(self, model: Searchable, cfg: RunConfig, costs: Optional[PositionCosts] = None,
                 task: Optional[Task] = None):
        self.model, self.cfg = model, cfg
        self.costs = costs  # GFLOPs per candidate at the target width (None: no budget, no penalty)
        self.task = task or task_of(cfg)  # its forward and loss

    # ---- data and epochs
    @classmethod
    def partition(cls, n: int, cfg: RunConfig) -> Partition:
        """Which of the n questions feed weight steps and which the arch steps (or scoring)."""
        raise NotImplementedError

    def arch_batches_per_epoch(self, epoch: int, steps: int) -> int:
        return 0

    def phase(self, epoch: int) -> str:
        return "search"

    def arch_start_epoch(self) -> int:
        """The first epoch (from 0) whose steps move the architecture logits."""
        return 0

    # ---- optimizers
    def build_optimizers(self, lr_base: float):
        tcfg, scfg = self.cfg.train, self.cfg.search
        weights = paddle.optimizer.Adam(learning_rate=lr_base, beta1=tcfg.betas[0], beta2=tcfg.betas[1],
                                        epsilon=tcfg.eps, parameters=self.model.weight_parameters())
        decay = scfg.arch_weight_decay or None  # L2 on the logits, added to their gradient
        arch = paddle.optimizer.Adam(learning_rate=scfg.arch_lr, beta1=scfg.arch_betas[0],
                                     beta2=scfg.arch_betas[1], epsilon=scfg.arch_eps,
                                     parameters=self.model.arch_parameters(), weight_decay=decay)
        return weights, arch

    # ---- one step
    def train_step(self, net, weight_opt, arch_opt, batch, lr: float, rng: np.random.Generator, at: StepAt,
                   arch_batches: Optional[Iterator], world: int = 1) -> Dict[str, float]:
        """One step of the loop; returns {"weight_loss", "grad_norm"} (losses summed over this
        process's samples), plus "arch_loss" when an architecture step ran on its own batch."""
        raise NotImplementedError

    # ---- the FLOP penalty
    def flops_penalty(self):
        """search.flops_weight * E[C] (GFLOPs) as a Paddle scalar, or None when it is off."""
        weight = self.cfg.search.flops_weight
        if not weight or self.costs is None:
            return None
        return weight * expected_gflops(self.model.arch_parameters(), self.costs)

    # ---- what the search found
    def choices(self) -> Dict[str, List[str]]:
        """The top op per position (skip included), within search.budget_gflops if set."""
        if self.costs is None:
            return self.model.top_choices()
        return fit_budget(self.model.probabilities(), self.costs, self.cfg.search.budget_gflops)

    def genotype(self) -> Dict[str, List[str]]:
        return genotype_from_choices(self.choices())

    def report(self, at: StepAt) -> dict:
        """Fields this strategy adds to the epoch JSON."""
        return {}


def all_reduce_array(values: np.ndarray) -> np.ndarray:
    """Sum of `values` over the processes (float64)."""
    import paddle.distributed as dist
    t = paddle.to_tensor(values.astype("float64"))
    dist.all_reduce(t)
    return t.numpy()
