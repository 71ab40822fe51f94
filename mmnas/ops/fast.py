"""Faster CPU forms of Linear and the reference LayerNorm, equal to the plain formulas to
float rounding (tests/test_perf_equivalence.py checks them against those formulas).

Why: on CPU, Paddle's generic reductions are slow. The gradient of a Linear's bias is a sum over
all B*N rows of the output gradient; paddle computes it with a column reduction that costs ~1/3
of the Linear's whole backward at [6400, 2048]. Written as a product with a row of ones it is a
GEMM and nearly free. The forward adds the bias inside the GEMM (addmm).

On GPU, in static graphs (paddle.jit.to_static, export) and under AMP, the plain paddle ops are
used: there they are already fast, or the custom backward would not apply.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer


def use_fast(x) -> bool:
    """True where the forms below apply: eager mode, CPU, float32."""
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


class _LinearCPU(PyLayer):
    """y = x @ w + b with the bias added in the GEMM and its gradient computed as ones @ dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        fan_in, fan_out = weight.shape
        x2 = x.reshape([-1, fan_in])
        y = paddle.addmm(bias.unsqueeze(0), x2, weight)
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.x_needs_grad = not x.stop_gradient
        return y.reshape(x.shape[:-1] + [fan_out])

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensor()
        fan_out = weight.shape[1]
        dy2 = dy.reshape([-1, fan_out])
        dx = paddle.matmul(dy2, weight, transpose_y=True).reshape(ctx.x_shape) if ctx.x_needs_grad else None
        dw = paddle.matmul(x2, dy2, transpose_x=True)
        db = paddle.matmul(paddle.ones([1, dy2.shape[0]], dy2.dtype), dy2).reshape([fan_out])
        return dx, dw, db


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias) (weight [in, out], Paddle's layout), fast on CPU."""
    if bias is None or not use_fast(x) or x.shape[0] == 0:
        return F.linear(x, weight, bias)
    return _LinearCPU.apply(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters `weight` [in, out] and `bias` [out]) with the fast CPU path."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class _UnbiasedLayerNormCPU(PyLayer):
    """y = gain * xc / (s + eps) + shift over the last axis, xc = x - row mean, s the unbiased
    row std.

    Row sums are matrix-vector products with a ones vector and the gain and shift gradients
    ones-row products: Paddle's CPU row and column reductions and its layer_norm_grad kernel
    are several times slower than MKL's GEMV on [6400, 512] (forward + backward was 63 ms there,
    this is ~25 ms). The backward is the formula's derivative in closed form: with d = s + eps,
    xhat = xc / d and g = dy * gain,
        dx = (g - mean(g) - xhat * sum(g * xhat) * d / ((H - 1) s)) / d
    (`- mean(g)` is the centring's gradient; sum(xhat) = 0 removes the rest).
    """

    @staticmethod
    def forward(ctx, x, gain, shift, eps):
        size = x.shape[-1]
        x2 = x.reshape([-1, size])  # [R, H]
        ones = paddle.ones([size, 1], x.dtype)
        xc = x2 - paddle.matmul(x2, ones) * (1.0 / size)
        s = paddle.sqrt(paddle.matmul(xc * xc, ones) * (1.0 / (size - 1)))  # [R, 1]
        inv = 1.0 / (s + eps)
        xhat = xc * inv
        # d / ((H - 1) s); a zero-variance row has xhat = 0, and the guard keeps its factor finite
        factor = (s + eps) / (paddle.clip(s, min=1e-30) * (size - 1))
        ctx.save_for_backward(xhat, inv, factor, gain)
        return (xhat * gain + shift).reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xhat, inv, factor, gain = ctx.saved_tensor()
        rows, size = xhat.shape
        dy2 = dy.reshape([rows, size])
        ones_h = paddle.ones([size, 1], dy.dtype)
        ones_r = paddle.ones([1, rows], dy.dtype)
        d_shift = paddle.matmul(ones_r, dy2).reshape([size])
        d_gain = paddle.matmul(ones_r, dy2 * xhat).reshape([size])
        g = dy2 * gain
        g_mean = paddle.matmul(g, ones_h) * (1.0 / size)  # [R, 1]
        g_xhat = paddle.matmul(g * xhat, ones_h) * factor  # [R, 1]
        dx = (g - g_mean - xhat * g_xhat) * inv
        return dx.reshape(dy.shape), d_gain, d_shift


def layer_norm_unbiased(x, gain, shift, eps: float):
    """gain * (x - mean) / (std + eps) + shift, std the unbiased (H-1) standard deviation, over
    the last axis: the LayerNorm of the released weights."""
    if use_fast(x) and x.shape[0] != 0:
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
    size = x.shape[-1]
    c = math.sqrt((size - 1) / size)
    centered = x - x.detach().mean(axis=-1, keepdim=True)
    cd = centered.detach()
    std = paddle.sqrt((cd * cd).mean(axis=-1, keepdim=True))
    k = paddle.rsqrt(1.0 + std * (2.0 / (c * eps)))
    return F.layer_norm(centered * k, [size], weight=gain * c, bias=shift, epsilon=(c * eps) ** 2)


_DROPOUT_SEED_RANGE = 2 ** 31 - 1
_MASK_CHUNK = 1 << 20  # values per independently seeded chunk of a dropout mask
_mask_pool = None  # threads that draw mask chunks; created on first use


def _mask_workers() -> int:
    """Threads for drawing masks: the process's BLAS thread count (mmnas.runtime sets it)."""
    for var in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "CPU_NUM"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return os.cpu_count() or 1


def _draw_chunk(seed: int, chunk: int, threshold: np.uint32, scale: np.float32, out: np.ndarray) -> None:
    """out[:] = scale where a fresh uniform 32-bit word >= threshold, else 0. The stream is
    seeded by (seed, chunk) alone, so a mask never depends on how many threads drew it."""
    words = np.random.PCG64(np.random.SeedSequence((seed, chunk))).random_raw((out.size + 1) // 2)
    keep = words.view(np.uint32)[:out.size] >= threshold
    np.multiply(keep, scale, out=out)


def dropout_mask(seed: int, size: int, p: float) -> np.ndarray:
    """float32 [size]: 1 / (1 - p) with probability 1 - p (exact to 2**-32), else 0, in chunks
    of 2**20 values drawn on the BLAS threads (numpy releases the GIL)."""
    global _mask_pool
    mask = np.empty(size, dtype=np.float32)
    threshold = np.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1))
    scale = np.float32(1.0 / (1.0 - p))
    chunks = [(seed, i, threshold, scale, mask[start:start + _MASK_CHUNK])
              for i, start in enumerate(range(0, size, _MASK_CHUNK))]
    workers = _mask_workers()
    if len(chunks) == 1 or workers == 1:
        for chunk in chunks:
            _draw_chunk(*chunk)
        return mask
    if _mask_pool is None or _mask_pool._max_workers != workers:
        _mask_pool = ThreadPoolExecutor(workers, thread_name_prefix="mmnas-dropout")
    for future in [_mask_pool.submit(_draw_chunk, *chunk) for chunk in chunks]:
        future.result()
    return mask


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
    seed = int(paddle.randint(0, _DROPOUT_SEED_RANGE, [1]).item())
    mask = dropout_mask(seed, int(np.prod(x.shape)), p).reshape(x.shape)
    return x * paddle.utils.dlpack.from_dlpack(mask)


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
