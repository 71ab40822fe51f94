"""SNAS (Xie et al., ICLR 2019) as the NAS-VQA attempt applies it, on MMnas's search space.

Facts in ../shared/spec/snas.md. Per training step, on ONE batch:
1. every position draws Gumbel noise g and forms the relaxed sample y = softmax((alpha + g) / tau);
   hard (default): z = onehot(argmax y) - stop_gradient(y) + y (straight-through: the value is
   the one-hot, the gradient that of y); soft: z = y;
2. the position outputs sum_k z_k op_k(x). Hard: only the sampled op runs (the others have
   z_k = 0 in value; their compute is skipped), and the gradient reaches every logit through
   z_active, dz_active/dalpha_i = y_a (delta_ai - y_i) / tau. Soft: every op runs;
3. one forward/backward of BCE (+ `search.flops_weight` * E[C]); then the weights' optimizer
   steps (train section) and the logits' optimizer steps (arch_lr, arch_betas, arch_eps,
   arch_weight_decay, optional arch_grad_clip), both from the gradients of that batch.
No 80/20 split, no warm-up, no alternation: `weight_fraction`, `warmup_epochs`, `arch_every`
and `arch_mode` are binary_gate settings. The temperature follows `tau_start` -> `tau_end` over
`tau_epochs` epochs (0: the whole search), per step (`tau_anneal`: constant | linear |
exponential | cosine), then stays at tau_end; the genotype is the
argmax of the logits (within the FLOP budget) after every epoch.

The Gumbel noise comes from the step's numpy generator (seeded by (seed, epoch)), so a resumed
search replays the same samples; with data parallel every process draws the same noise, the
logits' gradients are averaged over processes by hand and the penalty is added once.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import paddle
import paddle.nn.functional as F

from ..config import TAU_ANNEALS
from ..runtime import clip_grad_norm_
from .strategy import (Partition, SearchStrategy, StepAt, all_reduce_array, batch_loss, partition_split,
                       register_strategy, sub_batches)



def temperature(start: float, end: float, anneal: str, progress: float) -> float:
    """The Gumbel-softmax temperature at `progress` (fraction of the run done, 0..1)."""
    if anneal == "constant":
        return start
    if anneal == "linear":
        return start + (end - start) * progress
    if anneal == "exponential":
        return start * (end / start) ** progress
    if anneal == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown temperature schedule {anneal!r}; one of {TAU_ANNEALS}")


def relaxed_sample(alpha, noise: np.ndarray, tau: float, hard: bool):
    """(z, index of the sampled op): z = softmax((alpha + noise) / tau) [n], made one-hot in
    value but not in gradient when `hard` (straight-through)."""
    y = F.softmax((alpha + paddle.to_tensor(noise.astype("float32"))) / tau)
    index = int(np.argmax(y.numpy()))
    if not hard:
        return y, index
    onehot = np.zeros(len(noise), dtype="float32")
    onehot[index] = 1.0
    return paddle.to_tensor(onehot) - y.detach() + y, index


def sample_position(m, noise: np.ndarray, tau: float, hard: bool) -> None:
    """Make MixedOp m output sum_k z_k op_k(x) for the relaxed sample z of its logits: hard,
    only the sampled op runs (z_k = 0 in value for the others); soft, every op runs and trains."""
    z, index = relaxed_sample(m.alpha, noise, tau, hard)
    m.active, m.gate = index, z
    m.involved = [index] if hard else list(range(len(m.ops)))
    m.train_all = not hard


@register_strategy("snas")
class SNAS(SearchStrategy):

    @classmethod
    def partition(cls, n: int, cfg) -> Partition:
        """Every question trains (weights and logits alike). The arch part is only scored: the
        (1 - weight_fraction) seeded share of the same questions, for the top-path score."""
        scored = partition_split(n, cfg.search.weight_fraction, cfg.search.split_seed).arch
        return Partition(np.arange(n), scored)

    def temperature(self, at: StepAt) -> float:
        s = self.cfg.search
        epochs = s.tau_epochs or at.epochs
        progress = min((at.epoch * at.steps + at.step) / (epochs * at.steps), 1.0)
        return temperature(s.tau_start, s.tau_end, s.tau_anneal, progress)

    def sample(self, noise, tau: float) -> None:
        """Set every position's sample from its noise (recomputed per sub-batch, so each
        backward has its own graph back to alpha)."""
        for m, g in zip(self.model.mixed_ops(), noise, strict=True):
            sample_position(m, g, tau, self.cfg.search.hard)

    def train_step(self, net, weight_opt, arch_opt, batch, lr, rng, at: StepAt, arch_batches=None, world=1):
        model, scfg = self.model, self.cfg.search
        tau = self.temperature(at)
        noise = [rng.gumbel(size=len(m.ops)) for m in model.mixed_ops()]
        weight_opt.set_lr(lr)
        loss_sum = 0.0
        for last, part in sub_batches(batch, self.cfg.train.accu, self.task):
            self.sample(noise, tau)
            sync = net.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
            with sync:
                loss = batch_loss(net, self.task, part, self.cfg)
                # DataParallel averages the weights' gradients: a summed loss x world = the global sum
                (loss * self.task.backward_scale(world, self.cfg.train.accu)).backward()
            loss_sum += float(self.task.summed(loss, part))
        for p in model.inactive_parameters():  # zero-filled by DataParallel: not on the sampled path
            p.clear_gradient(False)
        alphas = model.arch_parameters()
        if world > 1:  # alpha is not synchronised by DataParallel (no_sync): average by hand
            grads = [a.grad.numpy() for a in alphas]
            flat = all_reduce_array(np.concatenate(grads)) / world
            with paddle.no_grad():
                for a, g in zip(alphas, np.split(flat, np.cumsum([len(g) for g in grads])[:-1])):
                    a.grad.set_value(g.astype("float32"))
        penalty = self.flops_penalty()
        if penalty is not None:
            penalty.backward()  # once, after the reduction
        if scfg.arch_grad_clip > 0:
            clip_grad_norm_(alphas, scfg.arch_grad_clip)
        params = [p for p in model.weight_parameters() if p.grad is not None]
        grad_norm = clip_grad_norm_(params, self.cfg.train.grad_clip)  # 0: no clipping
        weight_opt.step()
        arch_opt.step()
        weight_opt.clear_grad(set_to_zero=False)
        arch_opt.clear_grad(set_to_zero=False)
        model.close_gates()
        return {"weight_loss": loss_sum, "grad_norm": float(grad_norm), "temperature": tau}

    def report(self, at: StepAt) -> dict:
        s = self.cfg.search
        return {"temperature": self.temperature(at), "hard": s.hard}
