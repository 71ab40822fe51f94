"""Networks: MMNasNet built from a genotype."""
from .mmnasnet import AttentionMaps, AttFlat, Backbone, BlockAttention, MMNasNet, build_model

__all__ = ["AttentionMaps", "AttFlat", "Backbone", "BlockAttention", "MMNasNet", "build_model"]
