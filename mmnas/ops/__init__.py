"""The operator pool of MMNasNet: attention blocks, masks, relation geometry, LayerNorm, and
the op registry (registry.py) through which every op declares itself."""
from .attention import MHAtt, RelMHAtt
from .blocks import FFN, GA, MLP, RSA, SA, Skip
from .layer_norm import LayerNorm
from .masks import make_mask, make_token_mask
from .registry import OpSpec, build_op, op_flops, op_names, op_spec, register_op
from .relation import BoxRelations, box_relation_geometry

__all__ = ["MHAtt", "RelMHAtt", "FFN", "GA", "MLP", "RSA", "SA", "Skip", "LayerNorm", "OpSpec", "build_op",
           "op_flops", "op_names", "op_spec", "register_op",
           "make_mask", "make_token_mask", "BoxRelations", "box_relation_geometry"]
