"""Faster CPU forms of the model's operations, equal to the plain formulas to float rounding
(tests/test_perf_equivalence.py checks each against its formula, values and gradients).

Why: after the matrix products, a CPU training step is element-wise work, and Paddle's CPU
element-wise kernels and reductions run on one core. Two remedies are used:
- reductions as GEMMs: Linear adds its bias inside the GEMM (addmm) and computes the bias
  gradient as ones @ dy (Paddle's column reduction cost ~1/3 of the Linear's backward);
- numpy kernels over blocks of rows on all cores (numpy releases the GIL; tensors are shared
  with Paddle through DLPack, without copies): the unbiased-std LayerNorm, dropout masks (with
  ReLU folded in), the attention softmax with its key mask, and the RSA log bias.

They apply in eager mode on CPU in float32 (`use_fast`). On GPU, in static graphs
(paddle.jit.to_static, export) and under AMP the plain Paddle ops are used: there they are
already fast, or a custom backward would not apply. `MMNAS_FAST_KERNELS=0` in the environment
turns them off everywhere (to compare, or to rule them out when something looks wrong).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from .. import runtime


FAST_KERNELS_ENV = "MMNAS_FAST_KERNELS"


def kernels_enabled(environ=os.environ) -> bool:
    """False when the user set MMNAS_FAST_KERNELS to 0 / false / off (read at every call, so a
    test or a notebook can flip it without reloading anything)."""
    return environ.get(FAST_KERNELS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def use_fast(x) -> bool:
    """True where the forms below apply: switched on, eager mode, CPU, float32, not empty."""
    # in_dynamic_mode first: under paddle.jit.to_static the rest is never evaluated
    return (paddle.in_dynamic_mode() and kernels_enabled() and x.place.is_cpu_place()
            and x.dtype == paddle.float32 and int(np.prod(x.shape)) > 0)


def _needs_grad(*tensors):
    """Which inputs want a gradient: a PyLayer must return None for the others (frozen weights)."""
    return [not t.stop_gradient for t in tensors]


def _only_needed(needed, grads):
    return tuple(g if n else None for n, g in zip(needed, grads))


# ---- numpy kernels on all cores ----------------------------------------------------------------

_pool = None  # threads for the numpy kernels below; created on first use


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has the pool object but not its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _workers() -> int:
    """Threads for the numpy kernels: the process's BLAS thread count (mmnas.runtime sets it)."""
    return runtime.thread_count(user=os.environ)


def _in_threads(fn, count: int, chunk: int) -> None:
    """fn(lo, hi) for consecutive ranges of [0, count) of at most `chunk`, on the BLAS threads:
    numpy releases the GIL in its loops, and Paddle's own element-wise CPU kernels use one core
    of the machine while these use all of them."""
    global _pool
    ranges = [(lo, min(lo + chunk, count)) for lo in range(0, count, max(1, chunk))]
    workers = _workers()
    if len(ranges) <= 1 or workers == 1:
        for lo, hi in ranges:
            fn(lo, hi)
        return
    if _pool is None or _pool._max_workers != workers:
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="mmnas-kernels")
    for future in [_pool.submit(fn, lo, hi) for lo, hi in ranges]:
        future.result()


def _numpy(t) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (no copy)."""
    return np.from_dlpack(t.detach())


def _tensor(a: np.ndarray):
    """A Paddle tensor over a numpy array's memory (no copy); it keeps the array alive."""
    return paddle.utils.dlpack.from_dlpack(a)


_ROWS_CHUNK = 1 << 18  # values per chunk of the row-wise numpy kernels


class _LinearCPU(PyLayer):
    """y = x @ w + b with the bias added in the GEMM and its gradient computed as ones @ dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        fan_in, fan_out = weight.shape
        x2 = x.reshape([-1, fan_in])
        y = paddle.addmm(bias.unsqueeze(0), x2, weight)
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.needed = _needs_grad(x, weight, bias)
        return y.reshape(x.shape[:-1] + [fan_out])

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensor()
        fan_out = weight.shape[1]
        dy2 = dy.reshape([-1, fan_out])
        x_needed, w_needed, b_needed = ctx.needed
        dx = paddle.matmul(dy2, weight, transpose_y=True).reshape(ctx.x_shape) if x_needed else None
        dw = paddle.matmul(x2, dy2, transpose_x=True) if w_needed else None
        db = paddle.matmul(paddle.ones([1, dy2.shape[0]], dy2.dtype), dy2).reshape([fan_out]) if b_needed else None
        return dx, dw, db


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias) (weight [in, out], Paddle's layout), fast on CPU."""
    if bias is None or not use_fast(x):
        return F.linear(x, weight, bias)
    return _LinearCPU.apply(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters `weight` [in, out] and `bias` [out]) with the fast CPU path."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class _UnbiasedLayerNormCPU(PyLayer):
    """y = gain * xc / (s + eps) + shift over the last axis, xc = x - row mean, s the unbiased
    row std: numpy kernels over blocks of rows on all cores (Paddle's CPU layer_norm_grad and
    its reductions run on one core: forward + backward was 63 ms at [6400, 512], this is ~4x
    less). The backward is the formula's derivative in closed form: with d = s + eps,
    xhat = xc / d and g = dy * gain,
        dx = (g - mean(g) - xhat * sum(g * xhat) * d / ((H - 1) s)) / d
    (`- mean(g)` is the centring's gradient; sum(xhat) = 0 removes the rest).
    """

    @staticmethod
    def forward(ctx, x, gain, shift, eps):
        size = x.shape[-1]
        xs = _numpy(x).reshape(-1, size)  # [R, H]
        g, b = _numpy(gain), _numpy(shift)
        rows = xs.shape[0]
        xhat, y = np.empty_like(xs), np.empty_like(xs)
        inv, factor = np.empty((rows, 1), np.float32), np.empty((rows, 1), np.float32)

        def run(lo, hi):
            xc = xhat[lo:hi]
            np.subtract(xs[lo:hi], xs[lo:hi].mean(axis=1, keepdims=True), out=xc)
            s = np.sqrt(np.einsum("ij,ij->i", xc, xc)[:, None] / np.float32(size - 1))  # [r, 1]
            inv[lo:hi] = 1.0 / (s + np.float32(eps))
            # d / ((H - 1) s); a zero-variance row has xhat = 0, the guard keeps its factor finite
            factor[lo:hi] = (s + np.float32(eps)) / (np.maximum(s, np.float32(1e-30)) * np.float32(size - 1))
            np.multiply(xc, inv[lo:hi], out=xc)
            np.multiply(xc, g, out=y[lo:hi])
            np.add(y[lo:hi], b, out=y[lo:hi])
        _in_threads(run, rows, max(1, _ROWS_CHUNK // size))
        ctx.saved = (xhat, inv, factor, g)
        ctx.needed = _needs_grad(x, gain, shift)
        return _tensor(y).reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xhat, inv, factor, gain = ctx.saved
        rows, size = xhat.shape
        dys = _numpy(dy).reshape(rows, size)
        dx = np.empty_like(xhat)
        chunk = max(1, _ROWS_CHUNK // size)
        partial = {}  # first row of a block -> its (d_gain, d_shift) sums

        def run(lo, hi):
            d, h, t = dys[lo:hi], xhat[lo:hi], dx[lo:hi]
            np.multiply(d, h, out=t)
            partial[lo] = (t.sum(axis=0), d.sum(axis=0))
            np.multiply(d, gain, out=t)  # g
            g_xhat = np.einsum("ij,ij->i", t, h)[:, None] * factor[lo:hi]
            np.subtract(t, t.mean(axis=1, keepdims=True), out=t)
            t -= h * g_xhat
            np.multiply(t, inv[lo:hi], out=t)
        _in_threads(run, rows, chunk)
        d_gain = np.sum([partial[k][0] for k in sorted(partial)], axis=0, dtype=np.float32)
        d_shift = np.sum([partial[k][1] for k in sorted(partial)], axis=0, dtype=np.float32)
        return _only_needed(ctx.needed, (_tensor(dx).reshape(dy.shape), _tensor(d_gain), _tensor(d_shift)))


def layer_norm_unbiased(x, gain, shift, eps: float):
    """gain * (x - mean) / (std + eps) + shift, std the unbiased (H-1) standard deviation, over
    the last axis: the LayerNorm of the released weights."""
    if use_fast(x):
        return _UnbiasedLayerNormCPU.apply(x, gain, shift, eps)
    return _layer_norm_unbiased_fused(x, gain, shift, eps)


def _layer_norm_unbiased_fused(x, gain, shift, eps: float):
    """The same LayerNorm computed by Paddle's fused layer_norm op (the path off CPU, where that
    op is fast).

    The fused op gives (z - mean_z) / sqrt(var_z + e) with the biased variance. Feeding it
    z = k * (x - m), m the row mean and one k per row (both detached), turns that into
    (x - m) / sqrt(var + e / k^2), and with
        s = sqrt(var) (biased std), c = sqrt((H-1)/H), e = (c eps)^2, k = 1 / sqrt(1 + 2 s / (c eps))
    e / k^2 = 2 c eps s + c^2 eps^2, so sqrt(var + e / k^2) = s + c eps = c (std + eps): with the
    gain scaled by c this is the formula, eps placement included. Centring first keeps the fused
    op's variance accurate when |mean| >> std. Gradients: the op is shift-invariant, so the
    detached m changes nothing; the output depends on k only through the eps term, so the
    missing d k / d x is O(eps / std) relative. Zero-variance rows get k = 1 and give `shift`.
    """
    if x.dtype in (paddle.float16, paddle.bfloat16):  # AMP: normalise in float32 (x - mean)^2 overflows fp16
        dtype = x.dtype
        return _layer_norm_unbiased_fused(x.astype("float32"), gain.astype("float32"), shift.astype("float32"),
                                          eps).astype(dtype)
    size = x.shape[-1]
    c = math.sqrt((size - 1) / size)
    centered = x - x.detach().mean(axis=-1, keepdim=True)
    cd = centered.detach()
    std = paddle.sqrt((cd * cd).mean(axis=-1, keepdim=True))
    k = paddle.rsqrt(1.0 + std * (2.0 / (c * eps)))
    return F.layer_norm(centered * k, [size], weight=gain * c, bias=shift, epsilon=(c * eps) ** 2)


# ---- dropout ------------------------------------------------------------------------------------

_DROPOUT_SEED_RANGE = 2 ** 31 - 1
_MASK_CHUNK = 1 << 20  # values per independently seeded chunk of a dropout mask


def _draw_chunk(seed: int, chunk: int, threshold: np.uint32, scale: np.float32, out: np.ndarray,
                gate: Optional[np.ndarray]) -> None:
    """out[:] = scale where a fresh uniform 32-bit word >= threshold (and gate > 0, if given),
    else 0. The stream is seeded by (seed, chunk) alone, so a mask never depends on how many
    threads drew it."""
    words = np.random.PCG64(np.random.SeedSequence((seed, chunk))).random_raw((out.size + 1) // 2)
    keep = words.view(np.uint32)[:out.size] >= threshold
    if gate is not None:
        keep &= gate > 0
    np.multiply(keep, scale, out=out)


def dropout_mask(seed: int, size: int, p: float, gate: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 [size]: 1 / (1 - p) with probability 1 - p (exact to 2**-32), else 0, drawn in
    chunks of 2**20 values on the BLAS threads. With `gate` (float32 [size]) the mask is also 0
    where gate <= 0: ReLU folded into the mask."""
    mask = np.empty(size, dtype=np.float32)
    threshold = np.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1))
    scale = np.float32(1.0 / (1.0 - p))

    def draw(lo, hi):
        _draw_chunk(seed, lo // _MASK_CHUNK, threshold, scale, mask[lo:hi], None if gate is None else gate[lo:hi])
    _in_threads(draw, size, _MASK_CHUNK)
    return mask


class _MultiplyByConstant(PyLayer):
    """x * mask with mask a constant: Paddle's generic multiply backward also works out whether
    the mask needs a gradient and is ~2x slower than the one product needed here."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.mask = mask
        return x * mask

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.mask


def _apply_mask(x, p: float, relu: bool):
    seed = int(paddle.randint(0, _DROPOUT_SEED_RANGE, [1]).item())
    gate = _numpy(x).reshape(-1) if relu else None
    mask = dropout_mask(seed, int(np.prod(x.shape)), p, gate).reshape(x.shape)
    return _MultiplyByConstant.apply(x, _tensor(mask))


def dropout(x, p: float, training: bool = True):
    """F.dropout(x, p, training) in Paddle's default mode (upscale_in_train): each value is kept
    with probability 1 - p and scaled by 1 / (1 - p).

    On CPU the mask comes from `dropout_mask` (numpy PCG64 words compared with round(p * 2**32)),
    seeded by one draw from Paddle's global generator, so `paddle.seed` still makes every mask
    reproducible, and handed to Paddle without a copy (DLPack). Paddle's CPU dropout draws each
    value through std::mt19937_64 and a branch on one thread, ~10 ns per value: it was ~15% of
    a training step at batch 64; this is ~6x faster on 2 cores. The masks differ from Paddle's
    (another random stream of the same distribution); GPU and static graphs use Paddle's op.
    """
    if not training or p == 0:
        return x
    if not use_fast(x) or p >= 1:
        return F.dropout(x, p, training=True)
    return _apply_mask(x, p, relu=False)


def relu_dropout(x, p: float, training: bool = True):
    """dropout(ReLU(x), p, training). On CPU in training, one product x * mask whose mask is
    also 0 where x <= 0, with the same gradient (dy * mask); ReLU's own forward and backward
    passes over the tensor are saved (the FFN's [B*N, 4H] hidden layer is the largest there is).
    The values equal ReLU then dropout's, except that -0.0 may stand where 0.0 did, and that
    x = -inf gives NaN (-inf * 0) where ReLU gives 0: only after an overflow, which the
    non-finite-loss check of the training loop then reports."""
    if not training or p == 0 or not use_fast(x) or p >= 1:
        return dropout(F.relu(x), p, training)
    return _apply_mask(x, p, relu=True)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, no parameters) that returns its input untouched in eval mode
    or at p = 0 (Paddle's op copies it even then: ~6% of a CPU forward pass), and draws its
    training mask with `dropout` above on CPU."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.axis is None and self.mode == "upscale_in_train":
            return dropout(x, self.p, training=True)
        return super().forward(x)


# ---- attention softmax and the RSA log bias --------------------------------------------------

MASK_FILL = -1e9  # what masked scores are set to (the reference's masked_fill value)


def mask_fill(dtype) -> float:
    """MASK_FILL, or float16's lowest finite value under fp16 AMP (-1e9 would become -inf, and a
    sample whose keys are all padded would then get NaN weights instead of uniform ones)."""
    return -65504.0 if dtype == paddle.float16 else MASK_FILL


class _MaskedSoftmaxCPU(PyLayer):
    """softmax(where(mask, -1e9, scores)) over the last axis. scores [B, h, Nq, Nk], mask bool
    [B, 1, 1, Nk] (True = padded key) or None. Paddle's CPU softmax runs one core at ~4 ns per
    value, its `where` with a broadcast mask ~2 ns more; this is numpy on all cores. Masked keys
    get exactly 0 (exp(-1e9 - max) underflows), so the backward, y * (dy - sum(dy * y)), gives
    them 0 gradient as `where` does; it is zeroed explicitly for samples whose keys are all
    padded (uniform weights there)."""

    @staticmethod
    def forward(ctx, scores, mask):
        batch, nk = scores.shape[0], scores.shape[-1]
        x = _numpy(scores).reshape(batch, -1, nk)  # [B, h*Nq, Nk]
        keys = None if mask is None else _numpy(mask).reshape(batch, 1, nk)
        y = np.empty_like(x)
        per_sample = x.shape[1] * nk

        def run(lo, hi):  # samples lo..hi
            out = y[lo:hi]
            if keys is None:
                np.copyto(out, x[lo:hi])
            else:
                np.copyto(out, np.where(keys[lo:hi], np.float32(MASK_FILL), x[lo:hi]))
            np.subtract(out, out.max(axis=-1, keepdims=True), out=out)
            np.exp(out, out=out)
            np.divide(out, out.sum(axis=-1, keepdims=True), out=out)
        _in_threads(run, batch, max(1, _ROWS_CHUNK // per_sample))
        ctx.y, ctx.keys = y, keys
        return _tensor(y).reshape(scores.shape)

    @staticmethod
    def backward(ctx, dy):
        y, keys = ctx.y, ctx.keys
        g = _numpy(dy).reshape(y.shape)
        dx = np.empty_like(y)

        def run(lo, hi):
            t = dx[lo:hi]
            np.multiply(g[lo:hi], y[lo:hi], out=t)
            s = t.sum(axis=-1, keepdims=True)
            np.subtract(g[lo:hi], s, out=t)
            np.multiply(t, y[lo:hi], out=t)
            if keys is not None:
                for b in np.flatnonzero(keys[lo:hi].all(axis=-1).ravel()):
                    t[b] = 0  # every key padded: masked_fill's gradient is 0 there
        _in_threads(run, y.shape[0], max(1, _ROWS_CHUNK // (y.shape[1] * y.shape[2])))
        dscores = _tensor(dx).reshape(dy.shape)
        return dscores if keys is None else (dscores, None)  # one gradient per tensor input


def masked_softmax(scores, mask):
    """softmax(where(mask, MASK_FILL, scores), axis=-1); mask [B, 1, 1, Nk] bool or None."""
    if not use_fast(scores):
        if mask is not None:
            scores = paddle.where(mask, paddle.full([1], mask_fill(scores.dtype), scores.dtype), scores)
        return F.softmax(scores, axis=-1)
    return _MaskedSoftmaxCPU.apply(scores, mask)


class _ClampedLogCPU(PyLayer):
    """log(max(z, floor)); gradient dy / z where z >= floor, else 0 (numpy, all cores)."""

    @staticmethod
    def forward(ctx, z, floor):
        zn = _numpy(z).reshape(-1)
        y = np.empty_like(zn)
        floor32 = np.float32(floor)

        def run(lo, hi):
            np.maximum(zn[lo:hi], floor32, out=y[lo:hi])
            np.log(y[lo:hi], out=y[lo:hi])
        _in_threads(run, zn.size, _ROWS_CHUNK)
        ctx.z, ctx.floor = zn, floor32
        return _tensor(y).reshape(z.shape)

    @staticmethod
    def backward(ctx, dy):
        zn, floor = ctx.z, ctx.floor
        g = _numpy(dy).reshape(-1)
        dz = np.empty_like(zn)

        def run(lo, hi):
            z, out = zn[lo:hi], dz[lo:hi]
            np.maximum(z, floor, out=out)
            np.divide(g[lo:hi], out, out=out)
            np.multiply(out, z >= floor, out=out)  # clip passes the gradient at the floor itself, as Paddle's does
        _in_threads(run, zn.size, _ROWS_CHUNK)
        return _tensor(dz).reshape(dy.shape)


def relu_clamped_log(z, floor: float):
    """log(max(ReLU(z), floor)) = log(max(z, floor)) for floor > 0, gradient included."""
    if not use_fast(z):
        return paddle.log(paddle.clip(F.relu(z), min=floor))
    return _ClampedLogCPU.apply(z, floor)
