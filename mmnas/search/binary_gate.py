"""MMnas's search: binary gates (ProxylessNAS-style), two levels, alternating.

The training split is partitioned once (seeded) into a weight part (`search.weight_fraction`)
and an arch part. Every step samples one path per position from softmax(alpha) and trains only
that path's weights on a weight-part batch. After `search.warmup_epochs` epochs, every
`arch_every`-th weight step is followed by an architecture step on an arch-part batch: a newly
sampled path runs with binary gates, the gate gradients give d loss / d alpha (see
MixedOp.alpha_grad) and alpha takes a step of its own Adam. Weights never move in an
architecture step, alpha never moves in a weight step. With a FLOP penalty
(`search.flops_weight`), its gradient d(weight * E[C]) / d alpha joins the gate estimate.

Data parallel: all processes draw the same paths (same seeds) and each takes its slice of the
global batch. Weight gradients are averaged by DataParallel (loss scaled by the world size);
arch steps run with gradient sync off and the gate-derived alpha gradients are summed over
processes by hand, so every process takes the same alpha step.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import paddle

from ..models.supernet import Searchable
from ..tasks import Task, task_of
from ..runtime import clip_grad_norm_
from .strategy import (Partition, SearchStrategy, StepAt, all_reduce_array, batch_loss, partition_split,
                       register_strategy, sub_batches)


def weight_step(net, model: Searchable, optimizer, batch, lr: float, cfg, rng: np.random.Generator, world: int = 1,
                task: Optional[Task] = None):
    """Sample a path, train only its weights on `batch`; returns (summed loss, grad norm).
    `task`: its forward and loss (default: the task of cfg.data.dataset)."""
    task = task or task_of(cfg)
    model.sample_path(rng)
    optimizer.set_lr(lr)
    loss_sum = 0.0
    for last, part in sub_batches(batch, cfg.train.accu, task):
        sync = net.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
        with sync:
            loss = batch_loss(net, task, part, cfg)
            (loss * task.backward_scale(world, cfg.train.accu)).backward()  # DataParallel averages: a sum x world
        loss_sum += float(task.summed(loss, part))
    # DataParallel zero-fills the gradients of unused candidates; drop them so Adam skips them
    for p in model.inactive_parameters():
        p.clear_gradient(False)
    params = [p for p in model.weight_parameters() if p.grad is not None]
    grad_norm = clip_grad_norm_(params, cfg.train.grad_clip)  # 0: no clipping, the norm is still measured
    optimizer.step()
    optimizer.clear_grad(set_to_zero=False)  # None, not zero: a zero grad would still move Adam
    return loss_sum, float(grad_norm)



def arch_step(net, model: Searchable, arch_optimizer, weight_optimizer, batch, cfg, rng: np.random.Generator,
              world: int = 1, penalty=None, task: Optional[Task] = None) -> float:
    """Sample a gated path, estimate d loss / d alpha from the gates, step alpha only;
    returns the summed loss of the sampled path on `batch`. `penalty`: a callable giving a
    differentiable scalar of alpha (the FLOP penalty) whose gradient is added."""
    task = task or task_of(cfg)
    mode = cfg.search.arch_mode
    model.sample_path(rng, mode)
    loss_sum = 0.0
    sync = net.no_sync() if world > 1 else contextlib.nullcontext()  # alpha grads reduced below
    with sync:
        for _, part in sub_batches(batch, cfg.train.accu, task):
            loss = batch_loss(net, task, part, cfg)
            loss.backward()
            loss_sum += float(task.summed(loss, part))
    grads = model.alpha_grads()  # per position, numpy
    if world > 1:
        flat = all_reduce_array(np.concatenate(grads))
        grads = np.split(flat, np.cumsum([len(g) for g in grads])[:-1])
    weight_optimizer.clear_grad(set_to_zero=False)  # the path's weight gradients are not used
    alphas = model.arch_parameters()
    old = [a.numpy().copy() for a in alphas]
    # alpha.grad := grads, through the gradient of sum_i alpha_i * grad_i
    surrogate = paddle.add_n([(a * paddle.to_tensor(g.astype("float32"))).sum() for a, g in zip(alphas, grads)])
    extra = penalty() if penalty is not None else None
    (surrogate if extra is None else surrogate + extra).backward()
    clip = cfg.search.arch_grad_clip
    if clip > 0:
        clip_grad_norm_(alphas, clip)
    arch_optimizer.step()
    arch_optimizer.clear_grad(set_to_zero=False)
    if mode == "two":  # keep the total probability of the two involved ops (ProxylessNAS)
        for m, before in zip(model.mixed_ops(), old):
            idx = m.involved
            after = m.alpha.numpy().astype(np.float64)
            offset = np.log(np.exp(after[idx]).sum() / np.exp(before[idx].astype(np.float64)).sum())
            after[idx] -= offset
            m.alpha.set_value(after.astype("float32"))
    model.close_gates()
    return loss_sum


@register_strategy("binary_gate")
class BinaryGate(SearchStrategy):
    needs_arch_part = True

    @classmethod
    def partition(cls, n: int, cfg) -> Partition:
        return partition_split(n, cfg.search.weight_fraction, cfg.search.split_seed)

    def arch_batches_per_epoch(self, epoch: int, steps: int) -> int:
        scfg = self.cfg.search
        return steps // scfg.arch_every if epoch >= scfg.warmup_epochs else 0

    def phase(self, epoch: int) -> str:
        return "search" if epoch >= self.cfg.search.warmup_epochs else "warm-up"

    def train_step(self, net, weight_opt, arch_opt, batch, lr, rng, at: StepAt, arch_batches, world=1):
        loss, grad_norm = weight_step(net, self.model, weight_opt, batch, lr, self.cfg, rng, world, self.task)
        out = {"weight_loss": loss, "grad_norm": grad_norm}
        if arch_batches is not None and (at.step + 1) % self.cfg.search.arch_every == 0:
            arch_batch = next(arch_batches, None)
            if arch_batch is not None:
                out["arch_loss"] = arch_step(net, self.model, arch_opt, weight_opt, arch_batch, self.cfg, rng,
                                             world, penalty=self.flops_penalty, task=self.task)
        return out
