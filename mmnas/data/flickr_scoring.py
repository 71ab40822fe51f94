"""Retrieval evaluation of a pair scorer over a Flickr30K split: the full score matrix in
batches, and an optional two-stage retrieval that scores only the likely pairs fully.

Full matrix (the reference's evaluation, spec section 2.4): every (image, caption) pair goes
through the network: S [n_img, n_cap], n_img * n_cap passes (5M for the 1k test). Image rows
are split over `world` processes in contiguous blocks; each fills its rows, and `all_reduce_sum`
(identity for one process) adds the partial matrices. Each image is read once, each caption
encoded once.

Two-stage (beyond the reference):
1. A cheap first ranking from pooled features: the head's caption pooling (exact: the encoder
   never sees the image) and its image pooling of the projected regions *with the decoder
   skipped* (the decoder needs the caption), combined by the head itself,
       cheap(i, c) = proj(LayerNorm(AttFlat_lang(caption c) + AttFlat_img(adapter(regions of i))))
   (MatchingNet.caption_summary / image_summary / head.score). Costs n_cap + n_img encoder-free
   passes and n_img * n_cap head evaluations (a LayerNorm and a dot product each).
2. For every image its top_k captions, and for every caption its top_k images, by the cheap
   score, are scored by the full network: at most top_k * (n_img + n_cap) passes.
A learned first stage (models/matching_first_stage.py: a small dual encoder on the caption
pooling and the mean region feature, fitted after the network) gives another cheap matrix;
two_stage_score_matrix takes any. The result is a matrix the metrics read as usual: fully scored pairs keep their scores, every
other pair sits below all of them in its cheap-score order. The cheap stage was not trained
for this (the network is trained on full passes only), so how well its ranking holds up is a
property of the trained model: bench/retrieval.py reports both R@K side by side.

Scorers are callables on numpy (the task layer wraps the network, in eval mode, no gradients),
so this module needs no model.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Tuple

import numpy as np

from mmnas.data.flickr_mining import PairScorer, shard_range
from mmnas.progress import progress_bar

Summary = Callable[[np.ndarray], np.ndarray]  # a batch of inputs -> pooled summaries [B, F]
SummaryScore = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images [I, F], captions [C, F]) -> [I, C]


def _identity(matrix: np.ndarray) -> np.ndarray:
    return matrix


def all_caption_ids(dataset) -> np.ndarray:
    """int64 [n_cap, max_token]: every caption encoded once."""
    return np.stack([dataset.caption_ids(c) for c in range(len(dataset))])


def _pairs_batch(feats: np.ndarray, boxes: np.ndarray, image: int, caption_ids: np.ndarray,
                 captions: np.ndarray) -> Dict[str, np.ndarray]:
    """One image against a chunk of captions, in collate_pairs' form (no padding needed)."""
    b = len(captions)
    return {"region_feats": np.broadcast_to(feats, (b,) + feats.shape).copy(),
            "boxes": np.broadcast_to(boxes, (b,) + boxes.shape).copy(),
            "caption_ids": caption_ids[captions], "image_index": np.full(b, image, dtype=np.int64),
            "caption_index": captions.astype(np.int64)}


def full_score_matrix(dataset, scorer: PairScorer, caption_chunk: int = 128, rank: int = 0, world: int = 1,
                      all_reduce_sum: Callable[[np.ndarray], np.ndarray] = _identity,
                      progress: bool = True) -> Tuple[np.ndarray, Dict[str, float]]:
    """(S float32 [n_img, n_cap], {"pairs", "seconds", "pairs_per_s"} of this process)."""
    n_img, n_cap = dataset.n_images, len(dataset)
    caption_ids = all_caption_ids(dataset)
    scores = np.zeros((n_img, n_cap), dtype=np.float32)
    start, stop, _ = shard_range(n_img, rank, world)
    t0 = time.perf_counter()
    bar = progress_bar(total=(stop - start) * n_cap, desc="score pairs", unit="pair", disable=not progress)
    for image in range(start, stop):
        feats, boxes = dataset.image_arrays(image)
        for first in range(0, n_cap, caption_chunk):
            captions = np.arange(first, min(n_cap, first + caption_chunk))
            scores[image, captions] = scorer(_pairs_batch(feats, boxes, image, caption_ids, captions))
            bar.update(len(captions))
    bar.close()
    seconds = time.perf_counter() - t0
    pairs = (stop - start) * n_cap
    return all_reduce_sum(scores), {"pairs": float(pairs), "seconds": seconds,
                                    "pairs_per_s": pairs / seconds if seconds > 0 else float("inf")}


def caption_summaries(dataset, caption_summary: Summary, batch_size: int = 256) -> np.ndarray:
    """[n_cap, F]: caption_summary over every caption of the split, in batches."""
    caption_ids = all_caption_ids(dataset)
    return np.concatenate([caption_summary(caption_ids[s:s + batch_size])
                           for s in range(0, len(caption_ids), batch_size)])


def image_mean_features(dataset, progress: bool = True) -> np.ndarray:
    """float32 [n_img, feat_size]: every image's mean region feature (zero padding rows excluded),
    the image side of models/matching_first_stage.py."""
    out = []
    for k in progress_bar(range(dataset.n_images), desc="image means", disable=not progress):
        feats = dataset.image_arrays(k)[0]
        real = np.abs(feats).sum(axis=1) > 0
        out.append(feats[real].mean(axis=0) if real.any() else np.zeros(feats.shape[1], np.float32))
    return np.stack(out).astype(np.float32)


def cheap_score_matrix(dataset, caption_summary: Summary, image_summary: Summary, summary_score: SummaryScore,
                       batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """float32 [n_img, n_cap]: the head-based first stage's scores from pooled summaries (module doc)."""
    n_img = dataset.n_images
    captions = caption_summaries(dataset, caption_summary, batch_size)
    images = []
    for s in progress_bar(range(0, n_img, batch_size), desc="image summaries", disable=not progress):
        arrays = [dataset.image_arrays(k) for k in range(s, min(n_img, s + batch_size))]
        n_max = max(len(f) for f, _ in arrays)
        feats = np.zeros((len(arrays), n_max, arrays[0][0].shape[1]), dtype=np.float32)
        for b, (f, _) in enumerate(arrays):
            feats[b, :len(f)] = f
        images.append(image_summary(feats))
    images = np.concatenate(images)
    return np.concatenate([summary_score(images[s:s + batch_size], captions)
                           for s in range(0, n_img, batch_size)]).astype(np.float32)


def two_stage_score_matrix(dataset, scorer: PairScorer, cheap_scores: np.ndarray, top_k: int = 20,
                           caption_chunk: int = 128, rank: int = 0, world: int = 1,
                           all_reduce_sum: Callable[[np.ndarray], np.ndarray] = _identity,
                           progress: bool = True) -> Tuple[np.ndarray, Dict[str, float]]:
    """(S float64 [n_img, n_cap], stats) re-ranking the top_k of every row and column of
    cheap_scores with the full scorer; pairs split over processes by image."""
    n_img, n_cap = cheap_scores.shape
    k_cap, k_img = min(top_k, n_cap), min(top_k, n_img)
    chosen = np.zeros((n_img, n_cap), dtype=bool)
    rows = np.argsort(-cheap_scores, axis=1, kind="stable")[:, :k_cap]  # [n_img, k] captions per image
    chosen[np.arange(n_img)[:, None], rows] = True
    cols = np.argsort(-cheap_scores, axis=0, kind="stable")[:k_img]  # [k, n_cap] images per caption
    chosen[cols, np.arange(n_cap)[None, :]] = True
    caption_ids = all_caption_ids(dataset)
    full = np.zeros((n_img, n_cap), dtype=np.float64)
    start, stop, _ = shard_range(n_img, rank, world)
    pairs = int(chosen[start:stop].sum())
    t0 = time.perf_counter()
    bar = progress_bar(total=pairs, desc="re-rank pairs", unit="pair", disable=not progress)
    for image in range(start, stop):
        captions = np.flatnonzero(chosen[image])
        if not len(captions):
            continue
        feats, boxes = dataset.image_arrays(image)
        for first in range(0, len(captions), caption_chunk):
            chunk = captions[first:first + caption_chunk]
            full[image, chunk] = scorer(_pairs_batch(feats, boxes, image, caption_ids, chunk))
            bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    full = all_reduce_sum(full)
    # every pair not re-scored sits below all re-scored ones, in its cheap order
    floor = full[chosen].min() - 1.0
    cheap = cheap_scores.astype(np.float64)
    scores = np.where(chosen, full, floor - (cheap.max() - cheap))
    return scores, {"pairs": float(pairs), "seconds": seconds,
                    "pairs_per_s": pairs / seconds if seconds > 0 else float("inf"),
                    "share_scored": float(chosen.mean())}
