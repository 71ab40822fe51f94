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

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer


def _use_fast(x) -> bool:
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
    if bias is None or not _use_fast(x) or x.shape[0] == 0:
        return F.linear(x, weight, bias)
    return _LinearCPU.apply(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters `weight` [in, out] and `bias` [out]) with the fast CPU path."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def layer_norm_unbiased(x, gain, shift, eps: float):
    """gain * (x - mean) / (std + eps) + shift, std the unbiased (H-1) standard deviation, over
    the last axis: the LayerNorm of the released weights, computed by Paddle's fused layer_norm.

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


def dropout(x, p: float, training: bool = True):
    """F.dropout(x, p, training) in Paddle's default mode (upscale_in_train): each value is kept
    with probability 1 - p and scaled by 1 / (1 - p).

    On CPU the mask is drawn with numpy (PCG64 raw 32-bit words compared with round(p * 2**32):
    keep probability exact to 2**-32), seeded by one draw from Paddle's global generator, so
    `paddle.seed` still makes every mask reproducible. Paddle's CPU dropout draws each value
    through std::mt19937_64 and a branch, ~10 ns per value: dropout was ~15% of a training step
    at batch 64; this is ~3.4x faster. The masks differ from Paddle's (another random stream
    of the same distribution); GPU and static graphs use Paddle's op.
    """
    if not training or p == 0:
        return x
    if not _use_fast(x) or p >= 1:
        return F.dropout(x, p, training=True)
    seed = int(paddle.randint(0, _DROPOUT_SEED_RANGE, [1]).item())
    size = int(np.prod(x.shape))
    words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((size + 1) // 2)
    bits = words.view(np.uint32)[:size]
    mask = np.empty(size, dtype=np.float32)
    np.greater_equal(bits, np.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1)), out=mask, casting="unsafe")
    mask *= np.float32(1.0 / (1.0 - p))
    return x * paddle.to_tensor(mask.reshape(x.shape))


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
