"""The operator pool of MMNasNet: attention blocks, masks, relation geometry, LayerNorm."""
from .attention import MHAtt, RelMHAtt
from .blocks import FFN, GA, MLP, OPS, RSA, SA, build_op
from .layer_norm import LayerNorm
from .masks import make_mask, make_token_mask
from .relation import BoxRelations, box_relation_geometry

__all__ = ["MHAtt", "RelMHAtt", "FFN", "GA", "MLP", "OPS", "RSA", "SA", "build_op", "LayerNorm",
           "make_mask", "make_token_mask", "BoxRelations", "box_relation_geometry"]
