"""The LayerNorm the released weights were trained with.

It differs from `paddle.nn.LayerNorm` in two ways that change the numbers: the standard
deviation is the *unbiased* one (divides by H-1), and eps is added to the std, not to the
variance. Parameter names `a_2` / `b_2` are those of the released checkpoint.

It is computed by `ops.fast.layer_norm_unbiased`: numpy kernels on all cores on CPU (~5x faster
for forward + backward than the formula spelled out in Paddle ops), Paddle's fused layer_norm
with an exact rescaling elsewhere; `reference_layer_norm` keeps the formula, and
tests/test_perf_equivalence.py holds all three within 1e-5 of a float64 evaluation.
"""
import paddle
import paddle.nn as nn

from .fast import layer_norm_unbiased


def reference_layer_norm(x, a_2, b_2, eps):
    """The formula, op by op: a_2 * (x - mean) / (unbiased std + eps) + b_2."""
    mean = x.mean(axis=-1, keepdim=True)
    centered = x - mean
    # unbiased std: sum of squares / (H - 1)
    std = paddle.sqrt((centered * centered).sum(axis=-1, keepdim=True) / (x.shape[-1] - 1))
    return a_2 * centered / (std + eps) + b_2


class LayerNorm(nn.Layer):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.a_2 = self.create_parameter([size], default_initializer=nn.initializer.Constant(1.0))
        self.b_2 = self.create_parameter([size], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x):
        return layer_norm_unbiased(x, self.a_2, self.b_2, self.eps)
