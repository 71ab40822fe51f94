"""The image-text matching task (Flickr30K; spec grounding_matching.md section 2, docs/matching.md):
the backbone reads a caption (encoder) and an image's regions (decoder); the head gives one
matching logit per (image, caption) pair (models/matching_head.py). Training: every caption's
triplet (positive, negative caption, negative image; data/flickr_batches.py) under the
reference's loss (models/matching_loss.py), with hard negatives mined before each epoch from
matching.mine_from_epoch (data/flickr_mining.py; random negatives drawn anew each epoch before).
Evaluation: the score matrix of every (image, caption) pair of the split (data/flickr_scoring.py),
or the two-stage ranking (a learned first stage, then full passes on its top k), and R@1/5/10, medr, meanr both ways (metrics/retrieval.py).
"""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np

from ..data.flickr import random_negative_tables
from ..data.flickr_mining import mine_hard_negatives
from ..data.datasets import dataset_spec
from ..data.flickr_scoring import caption_summaries, full_score_matrix, image_mean_features, two_stage_score_matrix
from ..metrics.retrieval import RECALL_KS, format_retrieval, i2t_ranks, recall_summary, t2i_ranks
from ..models.flops import answer_head_flops
from ..models.matching_first_stage import fit_first_stage
from ..models.matching_head import MatchingNet, MatchingSuperNet, first_stage, pair_scorer
from ..models.matching_loss import matching_loss
from ..models.supernet import Searchable
from .base import Task
from .grounding import GroundingTask

TOP_KEPT = 10  # best captions per image and images per caption kept in the result file
TIMING = ("pairs", "seconds", "pairs_per_s")  # what the scoring reports, kept beside the matrix


class MatchingTask(Task):
    name = "matching"
    exportable = False  # a pair scorer over the whole split: evaluated by the dygraph model
    sample_noun = "captions"
    result_noun = "rankings (images and captions)"
    pred_noun = "score matrix [images, captions]"
    backbone_prefixes = GroundingTask.backbone_prefixes  # a VQA checkpoint's backbone loads (--CKPT_PATH)

    def vocab_text(self, vocab) -> str:
        return f"T={vocab.token_size}"

    # ---- the model
    def build_model(self, cfg, vocab, word_vectors=None):
        return MatchingNet(cfg, vocab.token_size, word_vectors)

    def build_supernet(self, cfg, search, vocab, word_vectors=None):
        return MatchingSuperNet(cfg, search, vocab.token_size, word_vectors)

    # ---- batches of triplets: every field [B, 3, ...] (data/flickr_batches.py)
    def piece(self, batch, lo, hi, n=None):
        """Rows [lo, hi): whole triplets. Regions are never cut: n is the count of the captions' own
        images, and the negative images have theirs (each batch is padded to its largest)."""
        return {k: v[lo:hi] for k, v in batch.items()}

    def forward(self, net, batch):
        """Logits [3B]: caption b's positive, negative caption, negative image in rows 3b, 3b+1, 3b+2."""
        feats, boxes, ids = batch["region_feats"], batch["boxes"], batch["token_ids"]
        return net(feats.reshape([-1, *feats.shape[2:]]), boxes.reshape([-1, *boxes.shape[2:]]),
                   ids.reshape([-1, ids.shape[-1]]))

    def loss(self, outputs, batch, run_cfg) -> Dict[str, object]:
        logits = outputs.astype("float32").reshape([-1, 3])  # [B, (pos, negc, negi)]
        m = run_cfg.matching
        return matching_loss(logits[:, 0], logits[:, 1], logits[:, 2], m.positive_weight, m.bce_form)

    def search_score(self, outputs, batch) -> float:
        """Triplets whose positive pair outscores both of its negatives."""
        logits = outputs.numpy().reshape(-1, 3)
        return float((logits[:, 0] > logits[:, 1:].max(axis=1)).sum())

    # ---- the negatives of each epoch
    def before_epoch(self, model, train_set, run_cfg, epoch, rank=0, world=1, progress=True) -> None:
        """Random negatives drawn anew before matching.mine_from_epoch, then hard negatives mined
        with the current model (eval mode; a supernet with a freshly sampled path, as the
        reference's search): each process mines a contiguous share of the anchors, gathered
        back in anchor order, so every process holds the same tables."""
        m, seed = run_cfg.matching, run_cfg.train.seed
        train_set.set_epoch(epoch)
        if epoch < m.mine_from_epoch:
            rng = np.random.default_rng([seed, epoch, 4])
            train_set.set_negatives(*random_negative_tables(train_set.n_images, rng, m.hard_negatives))
            return
        if isinstance(model, Searchable):
            model.sample_path(np.random.default_rng([seed, epoch, 3]))
        gather = _all_gather_rows if world > 1 else (lambda rows: [rows])
        tables = mine_hard_negatives(train_set.dataset, pair_scorer(model), k=m.mine_candidates,
                                     keep=m.hard_negatives, anchors_per_batch=m.mine_anchors, seed=seed,
                                     epoch=epoch, rank=rank, world=world, all_gather=gather, progress=progress)
        train_set.set_negatives(*tables)

    # ---- evaluation: the whole split at once
    splits_evaluation = True  # image rows split over the processes

    def predict_split(self, model, dataset, run_cfg, batch_size, progress=True, rank=0, world=1):
        """{"scores": S float32 [n_img, n_cap], "pairs", "seconds", "pairs_per_s"} (this
        process's scoring), batch_size captions against one image per pass. Two-stage: the
        pairs scored fully, and the seconds of the whole ranking (fitting the first stage included)."""
        scorer = pair_scorer(model)
        top_k = run_cfg.matching.two_stage_top_k if run_cfg is not None else 0
        split = {"rank": rank, "world": world, "all_reduce_sum": _all_reduce_sum if world > 1 else (lambda m: m),
                 "progress": progress}
        if not top_k:
            scores, stats = full_score_matrix(dataset, scorer, batch_size, **split)
            seconds = stats["seconds"]
        else:
            start = time.perf_counter()
            cheap = learned_first_stage(model, dataset, run_cfg, progress)  # fitted alike in every process
            first_seconds = time.perf_counter() - start
            scores, stats = two_stage_score_matrix(dataset, scorer, cheap, top_k, batch_size, **split)
            seconds = first_seconds + stats["seconds"]  # the pairs per second of the whole ranking
        pairs = stats["pairs"]
        if world > 1:  # every process's pairs, in the time of the slowest
            pairs = float(_all_reduce_sum(np.array([pairs]))[0])
            seconds = float(_all_reduce_max(np.array([seconds]))[0])
        return {"scores": scores.astype(np.float32), "pairs": np.float64(pairs), "seconds": np.float64(seconds),
                "pairs_per_s": np.float64(pairs / seconds if seconds > 0 else float("inf"))}

    def result_file(self, name: str, dataset) -> str:
        return f"result_run_{name}_{dataset.dataset}_{dataset.split}.json"

    def result_entries(self, dataset, outputs):
        """{"i2t": per image its rank (0-based) and its best TOP_KEPT captions with their scores,
        "t2i": per caption the same over images, and the scoring's pairs, seconds, pairs_per_s}."""
        scores = outputs["scores"]
        k_cap, k_img = min(TOP_KEPT, scores.shape[1]), min(TOP_KEPT, scores.shape[0])
        best_caps = np.argsort(-scores, axis=1, kind="stable")[:, :k_cap]  # [n_img, k]
        best_imgs = np.argsort(-scores.T, axis=1, kind="stable")[:, :k_img]  # [n_cap, k]
        image_ids = list(dataset.image_ids)
        i2t = [{"image_id": image_ids[i], "rank": int(r), "captions": best_caps[i].tolist(),
                "scores": [round(float(s), 6) for s in scores[i, best_caps[i]]]}
               for i, r in enumerate(i2t_ranks(scores))]
        t2i = [{"caption": c, "image_id": image_ids[c // 5], "rank": int(r),
                "images": [image_ids[i] for i in best_imgs[c]],
                "scores": [round(float(s), 6) for s in scores[best_imgs[c], c]]}
               for c, r in enumerate(t2i_ranks(scores))]
        return {"i2t": i2t, "t2i": t2i, **{k: float(outputs[k]) for k in TIMING}}

    def score(self, dataset, results) -> dict:
        """R@1/5/10, medr, meanr both ways from the ranks of the result file; "rsum" the six
        recalls' sum, "overall" their mean; the scoring's time and pairs per second."""
        out = {}
        for direction in ("i2t", "t2i"):
            ranks = np.array([entry["rank"] for entry in results[direction]])
            out.update({f"{direction}_{k}": v for k, v in recall_summary(ranks).items()})
        out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
        out["overall"] = out["rsum"] / (2 * len(RECALL_KS))
        out.update({k: results[k] for k in TIMING})
        return out

    def format_scores(self, dataset, scores: dict) -> str:
        return (f"{format_retrieval(scores)} | {scores['pairs']:.0f} pairs in {scores['seconds']:.1f}s "
                f"({scores['pairs_per_s']:.0f} pairs/s)")

    def scalars(self, scores: dict) -> Dict[str, float]:
        keys = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS] + ["rsum", "pairs_per_s"]
        return {"overall": scores["overall"], **{k: scores[k] for k in keys}}

    # ---- cost
    def head_flops(self, cfg, dataset_name: str, n: int, tokens: int) -> float:
        """AttFlat over the tokens and over the regions, then Linear(flat_out -> 1): the answer
        head's shape with one output."""
        return answer_head_flops(cfg, n, tokens, 1)


def learned_first_stage(model, dataset, run_cfg, progress: bool = True) -> np.ndarray:
    """float32 [n_img, n_cap]: the cheap ranking of two-stage retrieval, the dual encoder of
    models/matching_first_stage.py fitted on the training split (the frozen network's caption
    pooling and the images' mean region features; docs/matching.md has its measured R@K)."""
    caption_summary = first_stage(model)[0]
    train = dataset_spec(run_cfg.data.dataset).open(run_cfg, "train", dataset.vocab, progress).dataset
    fitted = fit_first_stage(image_mean_features(train, progress), caption_summaries(train, caption_summary),
                             seed=run_cfg.train.seed)
    return fitted.scores(image_mean_features(dataset, progress), caption_summaries(dataset, caption_summary))


def _all_reduce_sum(values: np.ndarray) -> np.ndarray:
    return _all_reduce(values, "SUM")


def _all_reduce_max(values: np.ndarray) -> np.ndarray:
    return _all_reduce(values, "MAX")


def _all_reduce(values: np.ndarray, op: str) -> np.ndarray:
    import paddle
    import paddle.distributed as dist
    t = paddle.to_tensor(np.ascontiguousarray(values))
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.numpy()


def _all_gather_rows(rows: np.ndarray) -> List[np.ndarray]:
    """Every process's rows, in rank order."""
    import paddle
    import paddle.distributed as dist
    gathered: List = []
    dist.all_gather(gathered, paddle.to_tensor(rows))
    return [t.numpy() for t in gathered]
