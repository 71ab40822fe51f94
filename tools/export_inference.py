"""Export a trained MMNasNet as a static Paddle inference model.

    python tools/export_inference.py --MODEL small --CKPT_PATH ckpt/MMNasNet-small_model_full.pdparams

writes results/inference/<ckpt stem>/model.json (model.pdmodel on Paddle 2) + model.pdiparams,
with inputs region_feats [B, N, 2048] float32, boxes [B, N, 4] float32 and question_ids
[B, 14] int64 (B and N dynamic), output logits [B, A]. The export is checked against the
dygraph model on a random padded batch before the tool reports success.

With --onnx the same network is also written as ONNX (<out>.onnx, paddle2onnx: pip install -e
".[onnx]") and checked in onnxruntime the same way.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.configure()  # threads, MKL, and Paddle's known warnings filtered (before Paddle is imported)

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from mmnas.config import ConfigError, load_config  # noqa: E402
from mmnas.checkpoint_files import (CheckpointError, WriteError, extract_state_dict, match_state_dict,  # noqa: E402
                                    safe_load)
from mmnas.models import MMNasNet  # noqa: E402
from mmnas.tasks import task_of  # noqa: E402
from mmnas.models.convert import check_hidden_size, checkpoint_sizes  # noqa: E402
from mmnas.inference.onnx_export import OnnxUnavailable, export_onnx, onnx_predictor  # noqa: E402
from mmnas.models.export import create_predictor, export_inference, predict, sample_inputs  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Export MMNasNet weights to a static Paddle inference model (paddle.jit.save).")
    p.add_argument("--MODEL", default="small",
                   help="config the weights were trained with: small, large, tiny, or a YAML path (default: small)")
    p.add_argument("--CKPT_PATH", required=True,
                   help="weights file (.pdparams, or a training checkpoint with a state_dict entry); "
                        "token and answer vocabulary sizes are read from its shapes")
    p.add_argument("--ARCH_PATH", default=None,
                   help="genotype file (JSON/YAML with enc/dec) overriding the config's, for searched models")
    p.add_argument("--out", default=None,
                   help="output path prefix (default: results/inference/<ckpt stem>/model)")
    p.add_argument("--onnx", action="store_true",
                   help="also write <out>.onnx (needs paddle2onnx; verified with onnxruntime)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip comparing the exported model with the dygraph one on a random batch")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    stem = os.path.splitext(os.path.basename(args.CKPT_PATH))[0]
    out = args.out or os.path.join("results", "inference", stem, "model")
    try:
        run_cfg = load_config(args.MODEL, args.ARCH_PATH)
        task = task_of(run_cfg).name
        if task != "answer":
            sys.exit(f"error: --MODEL={args.MODEL} is a {task} model; this tool exports the answer models (VQA, "
                     f"GQA), whose one output is the answer logits; grounding and matching models run in "
                     f"dygraph (--RUN=val/test/predict, docs/deployment.md)")
        cfg = run_cfg.model
        state = extract_state_dict(safe_load(args.CKPT_PATH), args.CKPT_PATH)
        token_size, answer_size = checkpoint_sizes(state, args.CKPT_PATH)
        check_hidden_size(state, cfg, args.CKPT_PATH)
        model = MMNasNet(cfg, token_size, answer_size)
        state = match_state_dict(model, state, args.CKPT_PATH)
    except (CheckpointError, ConfigError) as e:
        sys.exit(f"error: {e}")
    model.set_state_dict({k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in state.items()})
    model.eval()
    try:
        files = export_inference(model, out, max_token=cfg.max_token, feat_size=cfg.feat_size, flag="--out")
    except WriteError as e:  # a full disk or a read-only folder: the earlier export, if any, is intact
        sys.exit(f"error: {e}")
    print(f"exported {args.CKPT_PATH} (T={token_size}, A={answer_size})\n"
          f"  program: {files['model']}\n  params:  {files['params']}")
    runners = {"Paddle Inference": lambda *batch: predict(create_predictor(out), *batch)}
    if args.onnx:
        try:
            files["onnx"] = export_onnx(model, out + ".onnx", flag="--out")
        except (OnnxUnavailable, WriteError) as e:
            sys.exit(f"error: {e}")
        print(f"  onnx:    {files['onnx']}")
        runners["onnxruntime"] = lambda *batch: onnx_predictor(files["onnx"])(*batch)
    if not args.no_verify:
        feats, boxes, ids = sample_inputs(2, min(10, cfg.max_regions), token_size, cfg.max_token, cfg.feat_size)
        with paddle.no_grad():
            ref = model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(ids)).numpy()
        for runner_name, run in runners.items():
            diff = float(np.abs(run(feats, boxes, ids) - ref).max())
            if not diff < 1e-4:
                sys.exit(f"error: the exported model run by {runner_name} differs from the dygraph model by "
                         f"{diff:.3g} (max abs logit difference); please report this with your Paddle version")
            print(f"  verified: {runner_name} matches dygraph (max abs diff {diff:.2e})")
    return files


if __name__ == "__main__":
    main()
