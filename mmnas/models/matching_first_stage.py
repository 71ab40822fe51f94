"""A learned first stage for two-stage retrieval: a small dual encoder fitted after the matching
network, on features that need no (image, caption) pass.

    caption side: the matching network's caption pooling t_c [flat_out] (MatchingNet.caption_summary,
                  exact: the encoder never sees the image), computed once per caption
    image side:   the mean of the image's region features m_i [feat_size] (padding rows excluded)
    cheap(i, c) = cos(image_proj(m_i), caption_proj(t_c))

Only the two projections are trained (the matching network is frozen), with a symmetric
in-batch contrastive loss: a batch of B images, one random caption of each; image b's caption
is the positive among the B (temperature 0.05). A few hundred steps on precomputed features, so
it costs seconds next to the network's training. The head-based first stage of
data/flickr_scoring.py needs no fitting but ranks at chance unless the network was trained for
it (docs/matching.md); this one is trained for exactly that ranking.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..ops.fast import Linear


class FirstStage(nn.Layer):
    def __init__(self, caption_width: int, image_width: int, dim: int = 256):
        super().__init__()
        self.caption_proj = Linear(caption_width, dim)
        self.image_proj = Linear(image_width, dim)

    def embed(self, image_feats, caption_feats):
        """(unit image embeddings [I, dim], unit caption embeddings [C, dim])."""
        return (F.normalize(self.image_proj(image_feats), axis=-1),
                F.normalize(self.caption_proj(caption_feats), axis=-1))

    def scores(self, image_feats: np.ndarray, caption_feats: np.ndarray) -> np.ndarray:
        """float32 [I, C] cosine similarities (eval, no gradients)."""
        with paddle.no_grad():
            images, captions = self.embed(paddle.to_tensor(image_feats, dtype="float32"),
                                          paddle.to_tensor(caption_feats, dtype="float32"))
            return paddle.matmul(images, captions, transpose_y=True).numpy()


def fit_first_stage(image_feats: np.ndarray, caption_feats: np.ndarray, per_image: int = 5, dim: int = 256,
                    steps: int = 300, batch_size: int = 128, lr: float = 1e-3, temperature: float = 0.05,
                    seed: int = 0) -> FirstStage:
    """Fit FirstStage on image_feats [n_img, Fi] and caption_feats [n_cap = per_image * n_img, Fc]."""
    n_img = len(image_feats)
    if len(caption_feats) != per_image * n_img:
        raise ValueError(f"{len(caption_feats)} captions for {n_img} images: expected {per_image} per image")
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    model = FirstStage(caption_feats.shape[1], image_feats.shape[1], dim)
    opt = paddle.optimizer.Adam(learning_rate=lr, parameters=model.parameters())
    images_all = paddle.to_tensor(image_feats, dtype="float32")
    captions_all = paddle.to_tensor(caption_feats, dtype="float32")
    b = min(batch_size, n_img)
    targets = paddle.arange(b)
    for _ in range(steps):
        images = rng.choice(n_img, size=b, replace=False)
        captions = per_image * images + rng.integers(per_image, size=b)
        v, t = model.embed(paddle.gather(images_all, paddle.to_tensor(images)),
                           paddle.gather(captions_all, paddle.to_tensor(captions)))
        logits = paddle.matmul(v, t, transpose_y=True) / temperature  # [B images, B captions]
        loss = F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
        loss.backward()
        opt.step()
        opt.clear_grad()
    model.eval()
    return model
