"""Hard negatives for image-text matching, mined once per epoch (spec section 2.1, "Negatives").

For every anchor, draw K random candidates (with replacement, as the reference) that are not
its positives, score the K (anchor, candidate) pairs with the current model, keep the top
`keep` (5). Two tables come out:
- kind "captions": for every training image, its hard captions   [n_images, keep]
- kind "images":   for every training caption, its hard images   [n_captions, keep]
TripletDataset.set_negatives takes both.

The scorer is any callable `pair batch dict -> scores [B]` (collate_pairs' dict; higher =
better match), so this module needs no model: the task layer wraps the network in eval mode
without gradients. Images are read through the dataset (its .npz files or packed store), one
read per anchor image, never as an in-RAM copy of the whole split.

Data parallel: anchors are split into `world` contiguous shards; each process mines its own,
padded to the same length, and `gather_shards` (on the list an all-gather returns) puts the
rows back in anchor order. The candidates of an anchor are a function of (seed, epoch, kind,
anchor), so the table does not depend on the number of processes.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from mmnas.data.flickr import CAPTIONS_PER_IMAGE
from mmnas.progress import progress_bar

KINDS = {"captions": 1, "images": 2}  # what is mined (the anchors are the other modality)
PairScorer = Callable[[Dict[str, np.ndarray]], np.ndarray]


def shard_range(n: int, rank: int, world: int) -> Tuple[int, int, int]:
    """(start, stop, padded length) of rank's contiguous share of n anchors."""
    per = -(-n // world)
    start = min(n, rank * per)
    return start, min(n, start + per), per


def draw_candidates(kind: str, anchor: int, n_images: int, k: int, seed: int, epoch: int,
                    per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """int64 [k]: random candidates of one anchor, none of them its positive."""
    rng = np.random.default_rng([seed, epoch, KINDS[kind], anchor])
    if kind == "captions":  # anchor is an image; skip its own block of captions
        draws = rng.integers(0, per_image * (n_images - 1), size=k)
        return draws + per_image * (draws >= per_image * anchor)
    own = anchor // per_image  # anchor is a caption; skip its image
    draws = rng.integers(0, n_images - 1, size=k)
    return draws + (draws >= own)


def mine_shard(dataset, scorer: PairScorer, kind: str, k: int = 64, keep: int = 5, anchors_per_batch: int = 50,
               seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1, progress: bool = True) -> np.ndarray:
    """int64 [padded length, keep]: this rank's rows of the table (rows past its share are -1)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if keep > k:
        raise ValueError(f"cannot keep {keep} of {k} candidates")
    n_images = dataset.n_images
    n_anchors = n_images if kind == "captions" else len(dataset)
    start, stop, padded = shard_range(n_anchors, rank, world)
    table = np.full((padded, keep), -1, dtype=np.int64)
    batches = range(start, stop, anchors_per_batch)
    for first in progress_bar(batches, total=len(batches), desc=f"mine hard {kind}", disable=not progress):
        anchors = np.arange(first, min(stop, first + anchors_per_batch))
        candidates = np.stack([draw_candidates(kind, int(a), n_images, k, seed, epoch) for a in anchors])  # [A, k]
        anchor_col = np.repeat(anchors, k)
        if kind == "captions":
            batch = dataset.pair_batch(anchor_col, candidates.reshape(-1))
        else:
            batch = dataset.pair_batch(candidates.reshape(-1), anchor_col)
        scores = np.asarray(scorer(batch), dtype=np.float64).reshape(len(anchors), k)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :keep]  # [A, keep]
        table[first - start:first - start + len(anchors)] = np.take_along_axis(candidates, best, axis=1)
    return table


def gather_shards(shards: Sequence[np.ndarray], n_anchors: int) -> np.ndarray:
    """The full table from every rank's padded rows (in rank order, as an all-gather returns them)."""
    table = np.concatenate([np.asarray(s) for s in shards], axis=0)[:n_anchors]
    if len(table) != n_anchors or (table < 0).any():
        raise ValueError(f"the gathered shards hold {len(table)} complete rows, {n_anchors} anchors need one each")
    return table


def mine_hard_negatives(dataset, scorer: PairScorer, k: int = 64, keep: int = 5, anchors_per_batch: int = 50,
                        seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1,
                        all_gather: Callable[[np.ndarray], List[np.ndarray]] = lambda rows: [rows],
                        progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(hard captions [n_images, keep], hard images [n_captions, keep]) for TripletDataset.set_negatives.
    `all_gather(rows) -> [rows of rank 0, rank 1, ...]` (the default: one process)."""
    tables = []
    for kind, n_anchors in (("captions", dataset.n_images), ("images", len(dataset))):
        rows = mine_shard(dataset, scorer, kind, k, keep, anchors_per_batch, seed, epoch, rank, world, progress)
        tables.append(gather_shards(all_gather(rows), n_anchors))
    return tables[0], tables[1]
