"""Shared pieces of the bench scripts: analytic FLOP counts of MMNasNet, the machine's fp32
GEMM peak measured with numpy, and inputs of real shape.

Forward FLOPs come from mmnas/models/flops.py (matrix products only, the backbone ops' counts
from the op registry). Element-wise work is not counted: it is the overhead the measurement
exposes. Training = forward + backward, backward = 2x forward (input and weight gradients) except where
the input needs no gradient (the adapter on region features, the relation Linear on box
geometry), which have only the weight gradient.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Iterable, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmnas.data.vocab import MAX_TOKEN  # noqa: E402  (after the sys.path line)
from mmnas.models.flops import forward_flops  # noqa: E402
from mmnas.models.flops import VQA_ANSWERS as ANSWER_SIZE  # noqa: E402

FEAT_DIM = 2048
TOKEN_SIZE = 20000


def sample_flops(cfg, n: int, train: bool, **kw) -> float:
    f = forward_flops(cfg, n, **kw)
    total = f["adapter"] + f["rel"] + f["other"]
    if not train:
        return total
    return total + f["adapter"] + f["rel"] + 2 * f["other"]  # backward: weight grads only for the first two


def batch_flops(cfg, counts: Iterable[int], train: bool, padded: bool) -> float:
    """Sum over a batch: each sample at its own n (useful) or all at the batch's largest n (padded)."""
    counts = list(counts)
    if padded:
        return len(counts) * sample_flops(cfg, max(counts), train)
    return sum(sample_flops(cfg, int(n), train) for n in counts)


# ---- the machine ------------------------------------------------------------------------------

def _best_rate(fn, flops: float, reps: int, min_seconds: float = 0.0) -> float:
    fn()
    best, spent = float("inf"), 0.0
    for i in range(max(reps, 1)):
        start = time.perf_counter()
        fn()
        d = time.perf_counter() - start
        best, spent = min(best, d), spent + d
        if i + 1 >= reps and spent >= min_seconds:
            break
    return flops / best / 1e9


GEMM_SHAPES = ((6400, 512, 2048), (2048, 2048, 2048))


def numpy_gemm_peak(reps: int = 5, shapes=GEMM_SHAPES) -> Dict[str, float]:
    """fp32 GEMM GFLOP/s with numpy's BLAS (all its threads) per shape, and 'peak' = the best."""
    rng = np.random.default_rng(0)
    out = {}
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        out[f"{m}x{k}x{n}"] = round(_best_rate(lambda: np.matmul(a, b, out=c), 2.0 * m * k * n, reps), 1)
    out["peak"] = max(out.values())
    return out


def paddle_matmul_rate(m=6400, k=512, n=2048, reps: int = 5) -> float:
    """paddle.matmul GFLOP/s of [m,k]x[k,n] fp32 on the current device."""
    import paddle
    a = paddle.randn([m, k])
    b = paddle.randn([k, n])

    def run():
        c = paddle.matmul(a, b)
        if not paddle.device.get_device().startswith("cpu"):
            paddle.device.synchronize()
        return c
    return round(_best_rate(run, 2.0 * m * k * n, reps), 1)


# ---- inputs of real shape -----------------------------------------------------------------------

def box_counts(rng, batch: int, n_min: int, n_max: int, fixed: bool) -> np.ndarray:
    if fixed:
        return np.full(batch, n_max, dtype=np.int64)
    return rng.integers(n_min, n_max + 1, size=batch)


def make_batch(rng, counts: np.ndarray, answer_size: int = ANSWER_SIZE, token_size: int = TOKEN_SIZE):
    """numpy (region_feats [B,Nmax,2048], boxes [B,Nmax,4], question_ids [B,14], scores [B,A]):
    ReLU'd features and valid boxes for the first n rows of each sample, zero padding after,
    questions of 4..14 tokens, a few soft answer targets per sample."""
    batch, n_max = len(counts), int(max(counts))
    feats = np.zeros((batch, n_max, FEAT_DIM), dtype=np.float32)
    boxes = np.zeros((batch, n_max, 4), dtype=np.float32)
    for b, n in enumerate(counts):
        feats[b, :n] = np.maximum(rng.standard_normal((n, FEAT_DIM), dtype=np.float32), 0)
        xy = rng.uniform(0, 400, (n, 2))
        boxes[b, :n] = np.concatenate([xy, xy + rng.uniform(1, 200, (n, 2))], 1)
    question_ids = np.zeros((batch, MAX_TOKEN), dtype=np.int64)
    for b in range(batch):
        length = int(rng.integers(4, MAX_TOKEN + 1))
        question_ids[b, :length] = rng.integers(1, token_size, length)
    scores = np.zeros((batch, answer_size), dtype=np.float32)
    for b in range(batch):
        scores[b, rng.integers(0, answer_size, 3)] = rng.choice([0.3, 0.6, 0.9, 1.0], 3)
    return feats, boxes, question_ids, scores


def build_model(size: str, answer_size: int = ANSWER_SIZE, token_size: int = TOKEN_SIZE):
    from mmnas.config import load_config
    from mmnas.models import MMNasNet
    cfg = load_config(size).model
    return MMNasNet(cfg, token_size=token_size, answer_size=answer_size), cfg


def runtime_settings() -> Dict[str, object]:
    import paddle
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM", "MKL_DEBUG_CPU_TYPE")
           if k in os.environ}
    return {"paddle": paddle.__version__, "device": paddle.device.get_device(), "env": env,
            "cpus": os.cpu_count()}


def rounded(d: Dict[str, object], digits: int = 3) -> Dict[str, object]:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


def mean_of(values: List[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
