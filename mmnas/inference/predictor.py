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
- `auto`: `inference` for bf16, `dygraph` on a GPU; in fp32 on CPU the engine that answers a
  batch of the data faster on this machine (`choose_engine`): both are timed on one real batch
  (after a warm-up call each), the faster one runs, and the choice is cached per machine (CPU
  model, flags, threads, Paddle version) and model (parameter names and shapes) in
  <results>/cache/engine_choice.json, so later runs measure nothing. An evaluation of fewer than
  AUTO_MIN_BATCHES batches with nothing cached runs dygraph unmeasured: the export and the timing
  would cost more than the faster engine could save. One line says what was picked and why.
A request this machine cannot honour (bf16 on a CPU without bf16, the inference engine on a
GPU, bf16 through the dygraph engine) raises InferenceError, reported as one sentence with
exit status 2: nothing falls back silently to another precision.

Paddle is imported inside the functions: the CLI reads ENGINES and PRECISIONS before
mmnas.runtime has configured the process (threads must be set before Paddle loads).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .. import runtime

ENGINES = ("auto", "dygraph", "inference")
PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of oneDNN's bf16 paths
AUTO = "auto"  # resolve_engine's answer when the engine is to be chosen by measurement
AUTO_MIN_BATCHES = 20  # below this (and nothing cached) auto runs dygraph without measuring
AUTO_REPEATS = 2  # timed calls per engine, after one warm-up call each; the best counts
ENGINE_CACHE_FILE = "engine_choice.json"

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class InferenceError(ValueError):
    """An engine/precision request this machine cannot honour; the message says what to change."""


def _cpuinfo() -> Tuple[str, set]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ('', set()) where there is none."""
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
    return model, flags


def cpu_info() -> Dict[str, object]:
    """The CPU's model name and its bf16 capability: the cpuinfo flags, Paddle's own check
    (`core.supports_bfloat16`, False where oneDNN would emulate bf16), and `bf16`: both agree."""
    model, flags = _cpuinfo()
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
    return engine  # AUTO: chosen by measurement when the model is built (choose_engine)


def build_predictor(model, engine: str = "auto", precision: str = "fp32", threads: Optional[int] = None,
                    gpu: bool = False, sample: Optional[Sequence] = None, batches: Optional[int] = None,
                    cache_dir: Optional[str] = None, say: Callable[[str], None] = print) -> Predictor:
    """A callable (region_feats, boxes, question_ids) -> logits numpy [B, A] running `model`
    (in eval mode) on the resolved engine. Inputs may be numpy arrays or Paddle tensors.
    For auto in fp32 on CPU: `sample` is the batch both engines are timed on (default: a random
    one of 64 questions at 50 regions), `batches` how many the caller will run (None: unknown),
    `cache_dir` where the choice is kept (None: not kept), `say` prints the line about it."""
    threads = threads or runtime.thread_count(user=os.environ)
    builders = {"dygraph": lambda: _dygraph_predictor(model),
                "inference": lambda: _inference_predictor(model, precision, threads)}
    chosen = resolve_engine(engine, precision, gpu)
    if chosen != AUTO:
        return builders[chosen]()
    key = f"{machine_key(threads)}/{model_key(model)}"
    cache_path = os.path.join(cache_dir, ENGINE_CACHE_FILE) if cache_dir else None
    if batches is not None and batches < AUTO_MIN_BATCHES and key not in read_engine_cache(cache_path):
        say(f"engine auto: dygraph, unmeasured: {batches} batch(es) are too few to repay exporting and timing "
            f"Paddle Inference (measured from {AUTO_MIN_BATCHES} batches on; --ENGINE=inference runs it)")
        return builders["dygraph"]()
    if sample is None:
        from ..models.export import sample_inputs
        cfg = model.cfg
        sample = sample_inputs(64, min(50, cfg.max_regions), model_sizes(model)[0], cfg.max_token, cfg.feat_size)
    return choose_engine(builders, sample, key, cache_path, say=say)[1]


# ---- auto: the faster engine, measured on this machine ------------------------------------------

def machine_key(threads: int) -> str:
    """What the engines' relative speed depends on besides the model: CPU model and flags, thread
    count, Paddle version; hashed (the CPU model stays readable in the cache entry)."""
    import paddle
    model, flags = _cpuinfo()
    text = json.dumps([model, sorted(flags), threads, paddle.__version__])
    return "cpu-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def model_sizes(model) -> Tuple[int, int]:
    """(token vocabulary T, answer vocabulary A) of an MMNasNet, from its weight shapes."""
    return int(model.embedding.weight.shape[0]), int(model.proj.weight.shape[1])


def model_key(model) -> str:
    """The model's architecture and sizes (parameter names and shapes, not values), hashed."""
    shapes = [(name, list(value.shape)) for name, value in model.state_dict().items()]
    text = json.dumps([type(model).__name__, shapes])
    return "model-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def read_engine_cache(path: Optional[str]) -> Dict[str, dict]:
    """key -> {"engine", "seconds", ...}; empty when there is no file (or it is unreadable:
    then the engines are measured again and the file rewritten)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_engine_cache(path: str, key: str, entry: dict) -> None:
    entries = read_engine_cache(path)
    entries[key] = entry
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a cache: the run goes on, the next one measures again
        if os.path.exists(tmp):
            os.remove(tmp)


def time_engines(runners: Dict[str, Predictor], sample: Sequence, repeats: int = AUTO_REPEATS) -> Dict[str, float]:
    """Best wall-clock seconds of one call of each runner on `sample`, after one warm-up call
    each. Calls alternate between the runners, so a change in the machine's load hits all."""
    for run in runners.values():
        run(*sample)
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(*sample)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def choose_engine(builders: Dict[str, Callable[[], Predictor]], sample: Sequence, key: str,
                  cache_path: Optional[str], repeats: int = AUTO_REPEATS,
                  say: Callable[[str], None] = print) -> Tuple[str, Predictor]:
    """(name, predictor) of the faster of `builders` (name -> function building a predictor) on
    `sample`, or of the engine cached under `key` in `cache_path` (then only that one is built
    and nothing is timed). Says in one line what it picked and why."""
    cached = read_engine_cache(cache_path).get(key)
    if cached and cached.get("engine") in builders:
        name = cached["engine"]
        say(f"engine auto: {name} ({_timings(cached.get('seconds', {}))} per batch, measured on this machine "
            f"for this model on {cached.get('measured', '?')}; cached in {cache_path}, delete it to measure again)")
        return name, builders[name]()
    runners = {name: build() for name, build in builders.items()}
    seconds = time_engines(runners, sample, repeats)
    name = min(seconds, key=seconds.get)
    batch, regions = np.shape(sample[0])[:2]
    if cache_path:
        _write_engine_cache(cache_path, key, {
            "engine": name, "seconds": {k: round(v, 6) for k, v in seconds.items()}, "cpu": _cpuinfo()[0] or "unknown",
            "batch": [int(batch), int(regions)], "measured": time.strftime("%Y-%m-%d %H:%M")})
    kept = f"; cached in {cache_path}" if cache_path else ""
    say(f"engine auto: {name}, the faster on this machine ({_timings(seconds)} per batch of {batch} questions "
        f"at {regions} regions, best of {repeats} after a warm-up{kept})")
    return name, runners[name]


def _timings(seconds: Dict[str, float]) -> str:
    """'dygraph 0.120 s vs inference 0.100 s' (the order of the dict)."""
    return " vs ".join(f"{name} {value:.3f} s" for name, value in seconds.items())


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
