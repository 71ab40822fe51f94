"""Networks: MMNasNet built from a genotype."""
from .mmnasnet import AttFlat, Backbone, MMNasNet, build_model

__all__ = ["AttFlat", "Backbone", "MMNasNet", "build_model"]
