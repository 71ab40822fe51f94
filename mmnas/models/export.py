"""Exporting MMNasNet as a static Paddle inference model (for Paddle Inference / serving).

The exported program takes (region_feats [B, N, 2048], boxes [B, N, 4], question_ids [B, 14])
with B and N left dynamic, so one file serves any batch and any number of regions.
"""
from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from ..checkpoint_files import copy_file_atomic
from ..runtime import paddle_log_filtered


class InferenceWrapper(nn.Layer):
    """MMNasNet without the unused grid-feature input, so the exported program has exactly
    the three inputs a caller has."""

    def __init__(self, model: nn.Layer):
        super().__init__()
        self.model = model

    # Paddle matches InputSpecs to these argument names, and needs the first one to be `self`.
    def forward(self, region_feats, boxes, question_ids):
        return self.model(region_feats, None, boxes, question_ids)


def input_specs(max_token: int = 14, feat_size: int = 2048) -> List[InputSpec]:
    return [InputSpec([None, None, feat_size], "float32", "region_feats"),
            InputSpec([None, None, 4], "float32", "boxes"),
            InputSpec([None, max_token], "int64", "question_ids")]


def save_inference(model: nn.Layer, out_prefix: str, max_token: int = 14, feat_size: int = 2048) -> Dict[str, str]:
    """`paddle.jit.save` of `model` (put in eval mode: dropout off) under `out_prefix`, in place:
    for a temporary folder (export_onnx); export_inference is the safe way to a user's path.
    Returns {'model': <program file>, 'params': <.pdiparams>}."""
    model.eval()
    wrapper = InferenceWrapper(model)
    wrapper.eval()
    with paddle_log_filtered():  # Paddle's PIR log lines, see runtime "Known noise"
        paddle.jit.save(wrapper, out_prefix, input_spec=input_specs(max_token, feat_size))
    return exported_files(out_prefix)


def export_inference(model: nn.Layer, out_prefix: str, max_token: int = 14,
                     feat_size: int = 2048, flag: str = "") -> Dict[str, str]:
    """Save `model` (save_inference) under `out_prefix`. Returns the files written: {'model':
    <program file>, 'params': <.pdiparams>}. Paddle 3 writes the program as `<prefix>.json` (PIR);
    older Paddle as `<prefix>.pdmodel`.

    paddle.jit.save writes in place, so it writes to a temporary folder here, and each file reaches
    out_prefix through atomic_write, the program last: a kill or a full disk leaves the earlier
    export (or none), never a program beside half its parameters."""
    with tempfile.TemporaryDirectory(prefix="mmnas_export_") as folder:
        saved = os.path.join(folder, "model")
        program = save_inference(model, saved, max_token, feat_size)["model"]
        for name in sorted(os.listdir(folder), key=lambda n: os.path.join(folder, n) == program):
            copy_file_atomic(os.path.join(folder, name), out_prefix + name[len("model"):], flag)
    return exported_files(out_prefix)


def exported_files(out_prefix: str) -> Dict[str, str]:
    """Locate the program and parameter files of an exported model, whichever format."""
    params = out_prefix + ".pdiparams"
    for ext in (".json", ".pdmodel"):
        if os.path.isfile(out_prefix + ext) and os.path.isfile(params):
            return {"model": out_prefix + ext, "params": params}
    found = sorted(glob.glob(out_prefix + ".*"))
    raise FileNotFoundError(f"no exported model at prefix {out_prefix} (expected {out_prefix}.json or "
                            f".pdmodel plus .pdiparams; found {found or 'nothing'}); run tools/export_inference.py")


def create_predictor(out_prefix: str, threads: int = 1, onednn: bool = False, bf16: bool = False):
    """A CPU Paddle Inference predictor for an exported model; `onednn` runs its ops through
    oneDNN, `bf16` (with onednn) adds oneDNN's bfloat16 pass (matrix products in bf16)."""
    files = exported_files(out_prefix)
    config = paddle.inference.Config(files["model"], files["params"])
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    if onednn or bf16:
        config.enable_mkldnn()
    if bf16:
        config.enable_mkldnn_bfloat16()
    return paddle.inference.create_predictor(config)


@contextlib.contextmanager
def stdout_to_devnull():
    """Silence file descriptor 1 itself: C++ output bypasses sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def predict(predictor, region_feats: np.ndarray, boxes: np.ndarray, question_ids: np.ndarray,
            quiet: bool = True) -> np.ndarray:
    """Run a Paddle Inference predictor on numpy inputs -> logits [B, A]. `quiet` hides the
    lines Paddle's oneDNN passes print straight to stdout on a new input shape."""
    feeds = {"region_feats": np.ascontiguousarray(region_feats, dtype=np.float32),
             "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
             "question_ids": np.ascontiguousarray(question_ids, dtype=np.int64)}
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(list(feeds[name].shape))
        handle.copy_from_cpu(feeds[name])
    if quiet:
        with stdout_to_devnull():
            predictor.run()
    else:
        predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def sample_inputs(batch: int, regions: int, token_size: int, max_token: int = 14,
                  feat_size: int = 2048, seed: int = 0):
    """Random inputs shaped like real ones, with padding (zero feature rows, zero ids) in
    every sample but the first, to check an export against the dygraph model."""
    rng = np.random.RandomState(seed)
    feats = rng.rand(batch, regions, feat_size).astype(np.float32)
    xy = rng.rand(batch, regions, 2).astype(np.float32) * 500
    wh = rng.rand(batch, regions, 2).astype(np.float32) * 200 + 1
    boxes = np.concatenate([xy, xy + wh], axis=-1)
    ids = rng.randint(1, max(token_size, 2), size=(batch, max_token)).astype(np.int64)
    for b in range(1, batch):
        kept = rng.randint(1, regions + 1)
        feats[b, kept:] = 0
        boxes[b, kept:] = 0
        ids[b, rng.randint(1, max_token + 1):] = 0
    return feats, boxes, ids
