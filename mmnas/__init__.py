"""MMNasNet for VQA-v2 in PaddlePaddle."""
__version__ = "0.1.0"
