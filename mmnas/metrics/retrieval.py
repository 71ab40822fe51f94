"""Image-text retrieval metrics: Recall@K, median and mean rank in both directions.

Input is a score matrix S [n_img, n_cap] (higher = better match) in which caption c belongs
to image c // per_image (Flickr30K: 5 captions per image on consecutive lines).

- i2t (text retrieval): image i sorts its row in descending order; its rank is the position of
  the first of its own captions per_image*i ... per_image*i + per_image - 1.
- t2i (image retrieval): caption c sorts its column; its rank is the position of image c // per_image.
- R@K = 100 * share of queries with rank < K; medr = floor(median rank) + 1; meanr = mean rank + 1.

Ties are broken by index: the sort is a *stable* descending sort, so among equal scores the
lower caption (image) index comes first. The reference sorts ascending and reverses, i.e. the
higher index first; the values below are the same either way for a constant matrix. A
constant (collapsed) matrix with n images gives t2i R@K = K/n exactly (2.0 / 10.0 / 20.0 at
n = 50), and i2t R@K = 100 * ceil(K / per_image) / n (2.0 / 2.0 / 4.0 at n = 50): only the
first images' captions lead a tied row. Those values are a "the scorer collapsed" alarm; the
chance level of a random scorer is `chance_recalls`.
"""
from __future__ import annotations

from math import comb
from typing import Dict, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
CAPTIONS_PER_IMAGE = 5
_ROW_CHUNK = 256  # rows sorted at once (a [chunk, n_cap] int64 order array)


def _check(scores: np.ndarray, per_image: int) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"the score matrix must be 2-D [n_img, n_cap], got shape {list(scores.shape)}")
    n_img, n_cap = scores.shape
    if n_img == 0 or n_cap != per_image * n_img:
        raise ValueError(f"the score matrix is [{n_img}, {n_cap}] but {per_image} captions per image need "
                         f"n_cap = {per_image} * n_img = {per_image * n_img} (caption c belongs to image "
                         f"c // {per_image})")
    return scores


def i2t_ranks(scores: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """int64 [n_img]: 0-based position of image i's first own caption in its descending row."""
    scores = _check(scores, per_image)
    n_img, n_cap = scores.shape
    ranks = np.empty(n_img, dtype=np.int64)
    for start in range(0, n_img, _ROW_CHUNK):
        rows = scores[start:start + _ROW_CHUNK]
        order = np.argsort(-rows, axis=1, kind="stable")  # [r, n_cap] caption ids, best first
        owner = order // per_image  # image of the caption at each position
        own = owner == np.arange(start, start + len(rows))[:, None]
        ranks[start:start + len(rows)] = own.argmax(axis=1)  # first True = first own caption
    return ranks


def t2i_ranks(scores: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """int64 [n_cap]: 0-based position of image c // per_image in caption c's descending column."""
    scores = _check(scores, per_image)
    n_img, n_cap = scores.shape
    columns = scores.T  # [n_cap, n_img]
    ranks = np.empty(n_cap, dtype=np.int64)
    for start in range(0, n_cap, _ROW_CHUNK):
        rows = columns[start:start + _ROW_CHUNK]
        order = np.argsort(-rows, axis=1, kind="stable")  # [r, n_img] image ids, best first
        target = np.arange(start, start + len(rows)) // per_image
        ranks[start:start + len(rows)] = (order == target[:, None]).argmax(axis=1)
    return ranks


def recall_summary(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """{"r1", "r5", "r10", "medr", "meanr"} of 0-based ranks (R@K in percent)."""
    ranks = np.asarray(ranks)
    out = {f"r{k}": 100.0 * float((ranks < k).mean()) for k in ks}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def retrieval_scores(scores: np.ndarray, per_image: int = CAPTIONS_PER_IMAGE,
                     ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """Both directions: {"i2t_r1", ..., "i2t_medr", "i2t_meanr", "t2i_r1", ..., "rsum"}
    (rsum = the sum of the six recalls, the usual single number to pick a checkpoint by)."""
    out = {f"i2t_{k}": v for k, v in recall_summary(i2t_ranks(scores, per_image), ks).items()}
    out.update({f"t2i_{k}": v for k, v in recall_summary(t2i_ranks(scores, per_image), ks).items()})
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def chance_recalls(n_img: int, per_image: int = CAPTIONS_PER_IMAGE,
                   ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """Expected R@K (percent) of a scorer that orders at random (no ties):
    i2t: 1 - C(per*n - per, K) / C(per*n, K); t2i: K / n."""
    n_cap = per_image * n_img
    out = {f"i2t_r{k}": 100.0 * (1.0 - comb(n_cap - per_image, k) / comb(n_cap, k)) for k in ks}
    out.update({f"t2i_r{k}": 100.0 * min(k, n_img) / n_img for k in ks})
    return out


def format_retrieval(scores: Dict[str, float]) -> str:
    """One log line: 'i2t R@1/5/10 77.30/93.50/97.10 medr 1 · t2i ... · rsum ...'."""
    parts = []
    for d in ("i2t", "t2i"):
        recalls = "/".join(f"{scores[f'{d}_r{k}']:.2f}" for k in RECALL_KS)
        parts.append(f"{d} R@1/5/10 {recalls} medr {scores[f'{d}_medr']:.0f} meanr {scores[f'{d}_meanr']:.1f}")
    return " | ".join(parts) + f" | rsum {scores['rsum']:.2f}"
