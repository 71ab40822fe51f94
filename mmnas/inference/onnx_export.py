"""ONNX export of MMNasNet (paddle2onnx, the optional extra `onnx`) and an onnxruntime runner.

The ONNX file is converted from the Paddle inference export (models/export.py), so it has the
same inputs (region_feats [B, N, 2048] float32, boxes [B, N, 4] float32, question_ids [B, 14]
int64, B and N dynamic) and output (logits [B, A]).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..checkpoint_files import copy_file_atomic

ONNX_MISSING = ("ONNX export needs paddle2onnx and onnxruntime: pip install -e \".[onnx]\" "
                "(or pip install paddle2onnx onnxruntime)")
OPSET = 17


class OnnxUnavailable(ImportError):
    """paddle2onnx or onnxruntime is not installed (the message says how to install them)."""


def export_onnx(model, path: str, opset: int = OPSET, flag: str = "") -> str:
    """Write `model` (put in eval mode) as an ONNX file at `path` (whole or not at all: through
    atomic_write); returns the path."""
    try:
        import paddle2onnx
    except ImportError:
        raise OnnxUnavailable(ONNX_MISSING) from None
    from ..models.export import save_inference, stdout_to_devnull
    cfg = model.cfg
    with tempfile.TemporaryDirectory(prefix="mmnas_onnx_") as folder:
        files = save_inference(model, os.path.join(folder, "model"), max_token=cfg.max_token,
                               feat_size=cfg.feat_size)
        converted = os.path.join(folder, "model.onnx")
        with stdout_to_devnull():  # the converter prints its progress to stdout
            paddle2onnx.export(files["model"], files["params"], converted, opset_version=opset,
                               enable_onnx_checker=True, optimize_tool="None")
        copy_file_atomic(converted, path, flag)
    return path


def onnx_predictor(path: str, threads: int = 0):
    """A callable (region_feats, boxes, question_ids) -> logits numpy [B, A] running the ONNX
    file in onnxruntime on CPU (`threads` 0 = onnxruntime's default: all cores)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxUnavailable(ONNX_MISSING) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the converter leaves unused constants that ort warns about
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(region_feats, boxes, question_ids):
        feeds = {"region_feats": np.ascontiguousarray(region_feats, dtype=np.float32),
                 "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
                 "question_ids": np.ascontiguousarray(question_ids, dtype=np.int64)}
        return session.run(None, feeds)[0]
    return run
