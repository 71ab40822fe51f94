"""The operator pool: SA, GA, RSA and FFN blocks (and the search's skip), plus the MLP they
and AttFlat use.

Every block is post-norm residual, LN(x + Dropout(f(x))), and has one signature so a
genotype can stack any of them:
    block(x, y, x_mask, y_mask, relations) -> x'
x is the stream being transformed, y the other modality (the encoder output, used by GA).
Each op registers itself (ops/registry.py) with the inputs it reads, where it may stand and
its forward FLOPs per sample; n is the length of x, m the length of y.
"""
import paddle.nn as nn
import paddle.nn.functional as F

from .attention import MHAtt, RelMHAtt
from .fast import Dropout, Linear, relu_dropout
from .layer_norm import LayerNorm
from .registry import register_op


class FC(nn.Layer):
    """Linear, then optional ReLU and dropout (parameter path `fc.linear`)."""

    def __init__(self, in_size, out_size, dropout=0.0, use_relu=True):
        super().__init__()
        self.use_relu = use_relu
        self.linear = Linear(in_size, out_size)
        self.dropout = Dropout(dropout) if dropout > 0 else None

    def forward(self, x):
        x = self.linear(x)
        if self.use_relu and self.dropout is not None and self.training:
            return relu_dropout(x, self.dropout.p)  # one pass on CPU (ops.fast)
        if self.use_relu:
            x = F.relu(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class MLP(nn.Layer):
    """FC(in -> mid, ReLU, dropout) then Linear(mid -> out)."""

    def __init__(self, in_size, mid_size, out_size, dropout=0.0, use_relu=True):
        super().__init__()
        self.fc = FC(in_size, mid_size, dropout, use_relu)
        self.linear = Linear(mid_size, out_size)

    def forward(self, x):
        return self.linear(self.fc(x))


class PostNormBlock(nn.Layer):
    """Every block is post-norm residual: LN(x + Dropout(f(x))). Subclasses create their f
    first, then call add_norm, so parameters register in the reference order."""

    def add_norm(self, cfg):
        self.dropout = Dropout(cfg.dropout)
        self.norm = LayerNorm(cfg.hidden_size)

    def residual(self, x, fx):
        return self.norm(x + self.dropout(fx))


def _linear_flops(rows, fan_in, fan_out):
    return 2.0 * rows * fan_in * fan_out


def sa_flops(cfg, n, m):
    """q, k, v, merge projections and the two n x n attention products."""
    H = cfg.hidden_size
    return 4 * _linear_flops(n, H, H) + 2 * (2.0 * n * n * H)


def ga_flops(cfg, n, m):
    """q and merge on x (n rows), k and v on y (m rows), two n x m attention products."""
    H = cfg.hidden_size
    return 2 * _linear_flops(n, H, H) + 2 * _linear_flops(m, H, H) + 2 * (2.0 * n * m * H)


def rsa_flops(cfg, n, m):
    """SA's products plus the relation bias: linear_r on the n x n relation embedding."""
    return sa_flops(cfg, n, m) + _linear_flops(n * n, cfg.rel_size, cfg.hidden_size // cfg.rel_head_width)


def ffn_flops(cfg, n, m):
    H = cfg.hidden_size
    return _linear_flops(n, H, cfg.ffn_hidden) + _linear_flops(n, cfg.ffn_hidden, H)


@register_op("SA", reads="x", parts=("enc", "dec"), flops=sa_flops)
class SA(PostNormBlock):
    """Self attention over x, masked by x's own mask."""

    def __init__(self, cfg):
        super().__init__()
        self.mhatt = MHAtt(cfg.hidden_size, cfg.heads, cfg.dropout)
        self.add_norm(cfg)

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return self.residual(x, self.mhatt(x, x, x, x_mask))


@register_op("GA", reads="x+y", parts=("dec",), flops=ga_flops)
class GA(PostNormBlock):
    """Guided attention: queries from x, keys and values from y, masked by y's mask."""

    def __init__(self, cfg):
        super().__init__()
        self.mhatt = MHAtt(cfg.hidden_size, cfg.heads, cfg.dropout)
        self.add_norm(cfg)

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return self.residual(x, self.mhatt(y, y, x, y_mask))


@register_op("RSA", reads="x+relations", parts=("dec",), flops=rsa_flops)
class RSA(PostNormBlock):
    """Relation self attention over x, using the shared box relation embedding."""

    def __init__(self, cfg):
        super().__init__()
        self.mhatt = RelMHAtt(cfg.hidden_size, cfg.rel_head_width, cfg.rel_size, cfg.dropout)
        self.add_norm(cfg)

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return self.residual(x, self.mhatt(x, x, x, x_mask, relations))


@register_op("FFN", reads="x", parts=("enc", "dec"), flops=ffn_flops)
class FFN(PostNormBlock):
    """Position-wise feed-forward: Linear(H -> 4H), ReLU, dropout, Linear(4H -> H)."""

    def __init__(self, cfg):
        super().__init__()
        self.mlp = MLP(cfg.hidden_size, cfg.ffn_hidden, cfg.hidden_size, cfg.dropout)
        self.add_norm(cfg)

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return self.residual(x, self.mlp(x))


def no_flops(cfg, n, m):
    return 0.0


@register_op("skip", reads="x", parts=("enc", "dec"), flops=no_flops, in_genotype=False)
class Skip(nn.Layer):
    """The search's "none-style" candidate: the position is left out and x passes unchanged
    (so the genotype drops it)."""

    def __init__(self, cfg=None):
        super().__init__()

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return x
