"""Evaluation throughput of MMNasNet (forward only, batched, eval mode); prints ONE JSON line.

A set of questions with n drawn from 10..100 regions (or all 100 with --n100) is evaluated
twice: batches in random order, and batches ordered by box count as mmnas/engine/evaluate.py
does (each batch then pads to a similar n). Reports samples/s of both and the useful FLOP/s
(each sample at its own n, bench/common.py) as a fraction of the machine's fp32 GEMM peak,
measured with numpy in the same process before and after each ordering's run (their mean; the
best rate seen is reported too, see bench/train_step.py).

    python bench/eval.py [--model small|large] [--n100] [--questions 1024] [--batch 256]
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.flags import configure_runtime, input_parser  # noqa: E402  (argparse only)


def parse_args(argv=None):
    p = input_parser(__doc__.split("\n")[0], batch=256, batch_help="eval batch size (engine default 256)")
    p.add_argument("--questions", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=1, help="passes over the questions per ordering")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configure_runtime(args)
    import numpy as np
    import paddle

    from bench.common import (GEMM_SHAPES, batch_flops, box_counts, build_model, make_batch, numpy_gemm_peak,
                              paddle_matmul_rate, runtime_settings)

    peak_before = numpy_gemm_peak()
    paddle.seed(args.seed)
    model, cfg = build_model(args.model)
    model.eval()
    rng = np.random.default_rng(args.seed)
    counts = box_counts(rng, args.questions, args.n_min, args.n_max, args.n100)
    # one pool of per-question inputs; batches are cut from it and padded to their own largest n
    feats, boxes, qids, _ = make_batch(rng, counts, answer_size=1)

    def batches(order):
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            n = int(counts[idx].max())
            yield idx, feats[idx, :n], boxes[idx, :n], qids[idx]

    def run(order):
        """Seconds for all batches in this order, inputs converted per batch as a loader hands them."""
        out = None
        start = time.perf_counter()
        with paddle.no_grad():
            for _ in range(args.repeats):
                for idx, f, b, q in batches(order):
                    out = model(paddle.to_tensor(f), None, paddle.to_tensor(b), paddle.to_tensor(q)).numpy()
        return time.perf_counter() - start, out

    random_order = rng.permutation(args.questions)
    sorted_order = np.argsort(counts, kind="stable")
    run(sorted_order[:args.batch])  # warm-up
    one = GEMM_SHAPES[:1]
    p0 = numpy_gemm_peak(reps=3, shapes=one)["peak"]
    t_random, _ = run(random_order)
    p1 = numpy_gemm_peak(reps=3, shapes=one)["peak"]
    t_sorted, _ = run(sorted_order)
    p2 = numpy_gemm_peak(reps=3, shapes=one)["peak"]
    peak_random, peak_sorted = (p0 + p1) / 2, (p1 + p2) / 2
    peak_after = numpy_gemm_peak()
    matmul = paddle_matmul_rate()

    def flops(order, padded):
        return args.repeats * sum(batch_flops(cfg, counts[order[i:i + args.batch]], train=False, padded=padded)
                                  for i in range(0, len(order), args.batch))

    useful = flops(sorted_order, padded=False)
    peak = max(peak_before["peak"], peak_after["peak"], p0, p1, p2)
    total = args.repeats * args.questions
    result = {
        "bench": "eval", "model": args.model, "batch": args.batch, "questions": args.questions,
        "n": f"{args.n_max}" if args.n100 else f"{args.n_min}..{args.n_max}",
        "mean_n": round(float(counts.mean()), 1), "defaults": args.defaults,
        "samples_per_s_sorted": round(total / t_sorted, 2),
        "samples_per_s_random": round(total / t_random, 2),
        "ordering_speedup": round(t_random / t_sorted, 3),
        "useful_gflop_per_sample": round(useful / total / 1e9, 3),
        "useful_gflops_sorted": round(useful / t_sorted / 1e9, 1),
        "useful_gflops_random": round(useful / t_random / 1e9, 1),
        "padding_efficiency_sorted": round(useful / flops(sorted_order, True), 3),
        "padding_efficiency_random": round(useful / flops(random_order, True), 3),
        "numpy_gemm_peak_gflops_sorted": round(peak_sorted, 1),
        "numpy_gemm_peak_gflops_random": round(peak_random, 1),
        "useful_fraction_of_peak_sorted": round(useful / t_sorted / 1e9 / peak_sorted, 3),
        "useful_fraction_of_peak_random": round(useful / t_random / 1e9 / peak_random, 3),
        "numpy_gemm_best_peak_gflops": round(peak, 1),
        "useful_fraction_of_best_peak_sorted": round(useful / t_sorted / 1e9 / peak, 3),
        "paddle_matmul_gflops_6400x512x2048": matmul,
        "numpy_gemm": {"before": peak_before, "after": peak_after},
        "settings": runtime_settings(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
