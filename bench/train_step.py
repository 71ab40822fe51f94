"""Training throughput of MMNasNet at batch 64 on inputs of real shape; prints ONE JSON line.

Inputs: 2048-d region features, n regions per sample drawn from 10..100 (or all at 100 with
--n100), 14 question tokens, 3129 answers; BCE (sum) loss, Adam, gradient clipping by global
norm: one step is what mmnas/engine/train.py does per batch, including its split of the batch into
train.box_pieces sub-batches sorted by box count (--pieces). Reports samples/s and the useful
FLOP/s (FLOPs of each sample at its own n, bench/common.py) as a fraction of the machine's fp32
GEMM peak measured with numpy in the same process: before and after every timed step, since
other processes on a shared machine change what the CPU gives. `useful_fraction_of_peak` divides
by the time-weighted peak of the GEMM runs next to each step; `..._of_best_peak` by the best
GEMM rate seen in the whole run (the conservative figure when the load changed during the run).
"padded" figures count what the model computes: every sample at its piece's largest n.

    python bench/train_step.py [--model small|large] [--n100] [--steps 4] [--pieces K] [--defaults]

--defaults measures Paddle's own settings (skips mmnas.runtime.configure()); add
--plain-optimizer for Paddle's clip_grad_norm_ and single-tensor Adam. The model
code (mmnas/ops) is always the current one: for the original ops, run this file on a checkout of
the commit before.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.flags import configure_runtime, input_parser  # noqa: E402  (argparse only)
from mmnas.runtime import AMP_MODES  # noqa: E402  (imports neither numpy nor Paddle)


def parse_args(argv=None):
    p = input_parser(__doc__.split("\n")[0], batch=64, batch_help="training batch size")
    p.add_argument("--steps", type=int, default=4, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first: a run's first steps are ~15%% slower while the allocator settles")
    p.add_argument("--distinct-batches", type=int, default=3, help="different random batches to cycle")
    p.add_argument("--to-static", action="store_true", help="paddle.jit.to_static the model")
    p.add_argument("--amp", default="off", choices=list(AMP_MODES), help="mixed precision (GPU)")
    p.add_argument("--plain-optimizer", action="store_true",
                   help="paddle.nn.utils.clip_grad_norm_ and single-tensor Adam (Paddle's own) "
                        "instead of mmnas.runtime.clip_grad_norm_ and Adam(use_multi_tensor=True)")
    p.add_argument("--pieces", type=int, default=None,
                   help="sorted sub-batches per batch, as train.box_pieces (default: the model config's)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configure_runtime(args)
    import numpy as np
    import paddle
    import paddle.nn.functional as F
    from types import SimpleNamespace

    from bench.common import (GEMM_SHAPES, batch_flops, box_counts, build_model, make_batch, numpy_gemm_peak,
                              paddle_matmul_rate, runtime_settings)
    from mmnas import runtime

    peak_before = numpy_gemm_peak()
    paddle.seed(args.seed)
    model, cfg = build_model(args.model)
    if args.pieces is None:
        from mmnas.config import load_config
        args.pieces = load_config(args.model).train.box_pieces
    if args.to_static:
        args.pieces = 1  # as the engine does (see mmnas.runtime.maybe_to_static)
    model.train()
    params = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.Adam(learning_rate=1e-4, beta1=0.9, beta2=0.98, epsilon=1e-9, parameters=params,
                                      use_multi_tensor=not args.plain_optimizer)
    run_cfg = SimpleNamespace(train=SimpleNamespace(amp=args.amp, to_static=args.to_static))
    net = runtime.maybe_to_static(model, run_cfg)
    scaler = runtime.make_grad_scaler(run_cfg)

    rng = np.random.default_rng(args.seed)
    batches, counts = [], []
    for _ in range(args.distinct_batches):
        c = box_counts(rng, args.batch, args.n_min, args.n_max, args.n100)
        counts.append(c)
        batches.append([paddle.to_tensor(a) for a in make_batch(rng, c)])

    from mmnas.engine.train import sorted_pieces
    # per batch: [(sample indices or None for the whole batch, largest n)]
    pieces = [[(paddle.to_tensor(idx), n) for idx, n in sorted_pieces(c, args.pieces)] if args.pieces > 1
              and len(sorted_pieces(c, args.pieces)) > 1 else [(None, int(max(c)))] for c in counts]
    clip = paddle.nn.utils.clip_grad_norm_ if args.plain_optimizer else runtime.clip_grad_norm_

    def step(i):
        tensors = batches[i % len(batches)]
        total = 0.0
        for idx, n in pieces[i % len(batches)]:
            feats, boxes, qids, scores = tensors if idx is None else [t[idx] for t in tensors]
            with runtime.amp_context(run_cfg):
                logits = net(feats[:, :n], None, boxes[:, :n], qids)
            loss = F.binary_cross_entropy_with_logits(logits.astype("float32"), scores, reduction="sum")
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = total + loss.detach()
        runtime.clip_and_step(optimizer, scaler, params, 1.0, clip)
        return total

    def sync(x):
        float(x)  # host synchronisation once, after the timed loop

    for i in range(args.warmup):
        sync(step(i))
    # peak next to every step: [p0, step 0, p1, step 1, ..., pS]; the loss is read only at the end
    peaks = [numpy_gemm_peak(reps=3, shapes=GEMM_SHAPES[:1])["peak"]]
    step_seconds = []
    loss = None
    for i in range(args.steps):
        start = time.perf_counter()
        loss = step(args.warmup + i)
        step_seconds.append(time.perf_counter() - start)
        peaks.append(numpy_gemm_peak(reps=3, shapes=GEMM_SHAPES[:1])["peak"])
    start = time.perf_counter()
    sync(loss)
    step_seconds[-1] += time.perf_counter() - start
    seconds = sum(step_seconds)
    adjacent_peak = sum(t * (peaks[i] + peaks[i + 1]) / 2 for i, t in enumerate(step_seconds)) / seconds
    peak_after = numpy_gemm_peak()
    matmul = paddle_matmul_rate()

    used = [counts[(args.warmup + i) % len(counts)] for i in range(args.steps)]
    useful = sum(batch_flops(cfg, c, train=True, padded=False) for c in used)
    # padded: what the model computes, every sample at the largest n of its piece
    padded = sum(batch_flops(cfg, c[idx], train=True, padded=True) for c in used
                 for idx, _ in sorted_pieces(c, args.pieces))
    peak = max([peak_before["peak"], peak_after["peak"]] + peaks)
    result = {
        "bench": "train_step", "model": args.model, "batch": args.batch,
        "n": f"{args.n_max}" if args.n100 else f"{args.n_min}..{args.n_max}",
        "mean_n": round(float(np.mean(np.concatenate(used))), 1), "steps": args.steps,
        "pieces": args.pieces, "to_static": args.to_static, "amp": args.amp, "defaults": args.defaults,
        "optimizer": "paddle clip + Adam" if args.plain_optimizer else "runtime.clip_grad_norm_ + multi-tensor Adam",
        "samples_per_s": round(args.steps * args.batch / seconds, 3),
        "step_s": round(seconds / args.steps, 3),
        "useful_gflop_per_sample": round(useful / (args.steps * args.batch) / 1e9, 3),
        "useful_gflops": round(useful / seconds / 1e9, 1),
        "padded_gflops": round(padded / seconds / 1e9, 1),
        "padding_efficiency": round(useful / padded, 3),
        "numpy_gemm_peak_gflops": round(adjacent_peak, 1),
        "useful_fraction_of_peak": round(useful / seconds / 1e9 / adjacent_peak, 3),
        "padded_fraction_of_peak": round(padded / seconds / 1e9 / adjacent_peak, 3),
        "numpy_gemm_best_peak_gflops": round(peak, 1),
        "useful_fraction_of_best_peak": round(useful / seconds / 1e9 / peak, 3),
        "step_seconds": [round(t, 2) for t in step_seconds],
        "numpy_gemm_next_to_steps": [round(p, 1) for p in peaks],
        "paddle_matmul_gflops_6400x512x2048": matmul,
        "numpy_gemm": {"before": peak_before, "after": peak_after},
        "loss": round(float(loss), 3),
        "settings": runtime_settings(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
