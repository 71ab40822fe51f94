"""Padding masks. True marks a padded position, to be excluded from attention.

Masks have shape [B, 1, 1, N] so they broadcast over heads and query positions of the
[B, heads, Nq, N] score tensor.
"""
import paddle


def make_mask(feats):
    """Mask of rows whose absolute sum is zero: feats [B, N, D] -> bool [B, 1, 1, N]."""
    return (paddle.abs(feats).sum(axis=-1) == 0).unsqueeze(1).unsqueeze(2)


def make_token_mask(question_ids):
    """Mask of padding tokens (id 0): question_ids [B, T] -> bool [B, 1, 1, T]."""
    return (question_ids == 0).unsqueeze(1).unsqueeze(2)
