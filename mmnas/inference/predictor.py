"""One callable that answers batches, whatever runs the network: the dygraph model, or its
export in Paddle Inference with oneDNN on CPU (fp32, or bf16 on CPUs with bf16 instructions).

    run = build_predictor(model, engine="auto", precision="fp32")
    logits = run(region_feats [B, N, 2048], boxes [B, N, 4], question_ids [B, 14])  # numpy [B, A]

B and N may change from call to call (the export has dynamic shapes). The model must be in
eval mode for the dygraph engine; the inference engine exports it in eval mode.

Engines and precisions (the flags --ENGINE and --PRECISION, config train.eval_engine and
train.eval_precision):
- `dygraph`: the model itself (with the eager CPU kernels of ops/fast.py); float32 only.
- `inference`: the model exported with `paddle.jit.save` (models/export.py), run by a Paddle
  Inference predictor with oneDNN and the runtime's thread count; `bf16` adds oneDNN's bf16
  pass (matrix products in bfloat16) and needs avx512_bf16 or AMX-BF16.
- `auto`: `inference` for bf16, otherwise the engine measured faster in fp32 on CPU
  (FASTEST_FP32_CPU_ENGINE, see README "Performance"), `dygraph` on a GPU.
A request this machine cannot honour (bf16 on a CPU without bf16, the inference engine on a
GPU, bf16 through the dygraph engine) raises InferenceError, reported as one sentence with
exit status 2: nothing falls back silently to another precision.

Paddle is imported inside the functions: the CLI reads ENGINES and PRECISIONS before
mmnas.runtime has configured the process (threads must be set before Paddle loads).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, Optional

import numpy as np

from .. import runtime

ENGINES = ("auto", "dygraph", "inference")
PRECISIONS = ("fp32", "bf16")
# On the 2-core AMD EPYC this was built on, bench/eval.py measured the dygraph model (with the
# numpy kernels of ops/fast.py on both cores) faster than Paddle Inference + oneDNN in fp32 at
# n = 100 and level with it at mixed n, per unit of GEMM rate (README "Evaluation engines"); it
# also needs no export.
FASTEST_FP32_CPU_ENGINE = "dygraph"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of oneDNN's bf16 paths

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class InferenceError(ValueError):
    """An engine/precision request this machine cannot honour; the message says what to change."""


def cpu_info() -> Dict[str, object]:
    """The CPU's model name and its bf16 capability: the cpuinfo flags, Paddle's own check
    (`core.supports_bfloat16`, False where oneDNN would emulate bf16), and `bf16`: both agree."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        from paddle.base import core
        paddle_bf16 = bool(core.supports_bfloat16())
    except (ImportError, AttributeError):
        paddle_bf16 = False
    has = {flag: flag in flags for flag in BF16_CPU_FLAGS}
    return {"model": model or "unknown", "avx512f": "avx512f" in flags, **has, "amx_tile": "amx_tile" in flags,
            "paddle_supports_bf16": paddle_bf16, "bf16": paddle_bf16 and any(has.values())}


def resolve_engine(engine: str = "auto", precision: str = "fp32", gpu: bool = False) -> str:
    """The engine that will run ('dygraph' or 'inference') for a request; raises InferenceError
    when the request cannot be honoured here (checked at start-up by the CLI, before any work)."""
    if engine not in ENGINES:
        raise InferenceError(f"--ENGINE must be one of {', '.join(ENGINES)}, not {engine!r}.")
    if precision not in PRECISIONS:
        raise InferenceError(f"--PRECISION must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if gpu:
        if engine == "inference" or precision == "bf16":
            raise InferenceError("--ENGINE=inference and --PRECISION=bf16 are for CPU evaluation; on a GPU "
                                 "leave them at their defaults (auto, fp32).")
        return "dygraph"
    if precision == "bf16":
        if engine == "dygraph":
            raise InferenceError("--PRECISION=bf16 runs through Paddle Inference (Paddle's dygraph has no bf16 "
                                 "CPU matmul); use --ENGINE=inference or auto.")
        info = cpu_info()
        if not info["bf16"]:
            raise InferenceError(f"--PRECISION=bf16 needs a CPU with avx512_bf16 or AMX-BF16 and this one "
                                 f"({info['model']}) has neither; use --PRECISION=fp32.")
        return "inference"
    return FASTEST_FP32_CPU_ENGINE if engine == "auto" else engine


def build_predictor(model, engine: str = "auto", precision: str = "fp32", threads: Optional[int] = None,
                    gpu: bool = False) -> Predictor:
    """A callable (region_feats, boxes, question_ids) -> logits numpy [B, A] running `model`
    (in eval mode) on the resolved engine. Inputs may be numpy arrays or Paddle tensors."""
    chosen = resolve_engine(engine, precision, gpu)
    if chosen == "dygraph":
        return _dygraph_predictor(model)
    return _inference_predictor(model, precision, threads or runtime.thread_count(user=os.environ))


def _dygraph_predictor(model) -> Predictor:
    import paddle

    def run(region_feats, boxes, question_ids):
        with paddle.no_grad():
            out = model(_tensor(region_feats), None, _tensor(boxes), _tensor(question_ids))
        # a model of several outputs (e.g. grounding: region scores and box deltas) gives a tuple
        return tuple(o.numpy() for o in out) if isinstance(out, (tuple, list)) else out.numpy()
    return run


def _tensor(x):
    import paddle
    return x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x)


def _array(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _inference_predictor(model, precision: str, threads: int) -> Predictor:
    """Export `model` to a temporary folder, load it in a oneDNN predictor, forget the files
    (the predictor holds the program and weights in memory once created)."""
    from ..models.export import create_predictor, export_inference, predict  # imports paddle
    cfg = model.cfg
    with tempfile.TemporaryDirectory(prefix="mmnas_export_") as folder:
        prefix = os.path.join(folder, "model")
        export_inference(model, prefix, max_token=cfg.max_token, feat_size=cfg.feat_size)
        predictor = create_predictor(prefix, threads=threads, onednn=True, bf16=precision == "bf16")

    def run(region_feats, boxes, question_ids):
        return predict(predictor, _array(region_feats), _array(boxes), _array(question_ids))
    return run
