"""Evaluation throughput of MMNasNet per engine (forward only, batched); prints ONE JSON line.

One pool of questions, n drawn from 10..100 regions (or all 100 with --n100), is answered by
every engine on the same inputs, in batches ordered by box count as mmnas/engine/evaluate.py
does (each batch pads to its own largest n), and, for the two engines evaluate() can use
(dygraph, inference), also in batches of random order (the ordering gain):
- dygraph: the Paddle model itself (eager, with the CPU kernels of mmnas/ops/fast.py);
- inference: its export in Paddle Inference with oneDNN, fp32 (mmnas/inference);
- inference_bf16: the same with oneDNN's bf16 pass, on CPUs with avx512_bf16/AMX-BF16 only;
- onnxruntime: the ONNX export (paddle2onnx) in onnxruntime, when both are installed;
- torch, torch_bf16: the same network in PyTorch (bench/torch_mmnasnet.py, same weights), fp32
  and under torch.autocast('cpu', torch.bfloat16) (bf16 CPUs only), when torch is installed.
Before timing, every fp32 engine must reproduce the dygraph logits to 1e-4 on a mixed batch
(the bench stops otherwise); bf16 engines report how often their top answer equals fp32's.
Every engine uses the runtime's thread count. Passes run round-robin over the engines,
`--repeats` times, and each engine keeps its best pass (the machine is shared). Useful FLOP/s
(each sample at its own n, bench/common.py) are given as a fraction of the numpy fp32 GEMM
rate measured right before that engine's pass.

    python bench/eval.py [--model small|large] [--n100] [--questions 1024] [--batch 256]
                         [--engines dygraph,inference,...] [--repeats 2]
"""
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.flags import configure_runtime, input_parser  # noqa: E402  (argparse only)

ENGINES = ("dygraph", "inference", "inference_bf16", "onnxruntime", "torch", "torch_bf16")
ORDERED_AND_RANDOM = ("dygraph", "inference")  # the engines evaluate.predict can use


def parse_args(argv=None):
    p = input_parser(__doc__.split("\n")[0], batch=256, batch_help="eval batch size (engine default 256)")
    p.add_argument("--questions", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2, help="round-robin passes; each engine keeps its best")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated subset of {','.join(ENGINES)} (unavailable ones are reported as skipped)")
    return p.parse_args(argv)


def build_engines(names, model, cfg, threads):
    """name -> callable(feats, boxes, ids) -> logits, and name -> reason for engines skipped."""
    from mmnas.inference import build_predictor, cpu_info
    bf16_cpu = cpu_info()["bf16"]
    engines, skipped = {}, {}
    for name in names:
        if name == "dygraph":
            engines[name] = build_predictor(model, "dygraph")
        elif name == "inference":
            engines[name] = build_predictor(model, "inference", "fp32", threads=threads)
        elif name == "inference_bf16":
            if bf16_cpu:
                engines[name] = build_predictor(model, "inference", "bf16", threads=threads)
            else:
                skipped[name] = "this CPU has no avx512_bf16/AMX-BF16"
        elif name == "onnxruntime":
            try:
                import tempfile

                from mmnas.inference.onnx_export import OnnxUnavailable, export_onnx, onnx_predictor
                with tempfile.TemporaryDirectory(prefix="mmnas_bench_onnx_") as folder:  # the session keeps the model
                    engines[name] = onnx_predictor(export_onnx(model, os.path.join(folder, "model.onnx")), threads)
            except OnnxUnavailable as e:
                skipped[name] = str(e)
        elif name in ("torch", "torch_bf16"):
            if importlib.util.find_spec("torch") is None:
                skipped[name] = "torch is not installed (pip install torch==2.13.0)"
                continue
            if name == "torch_bf16" and not bf16_cpu:
                skipped[name] = "this CPU has no avx512_bf16/AMX-BF16"
                continue
            engines[name] = torch_engine(model, cfg, threads, bf16=name == "torch_bf16")
        else:
            raise SystemExit(f"error: unknown engine {name!r} in --engines; choose from {','.join(ENGINES)}")
    model.eval()
    return engines, skipped


def torch_engine(model, cfg, threads, bf16):
    import torch

    from bench.torch_mmnasnet import TorchMMNasNet, load_paddle_weights
    torch.set_num_threads(threads)
    net = load_paddle_weights(TorchMMNasNet(cfg, model.embedding.weight.shape[0], model.proj.weight.shape[1]), model)

    def run(feats, boxes, ids):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = net(torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(ids))
        return out.float().numpy()
    return run


def main(argv=None):
    args = parse_args(argv)
    configure_runtime(args)
    import numpy as np
    import paddle

    from bench.common import (GEMM_SHAPES, batch_flops, box_counts, build_model, make_batch, numpy_gemm_peak,
                              paddle_matmul_rate, runtime_settings)
    from mmnas import runtime
    from mmnas.inference import cpu_info

    threads = runtime.thread_count(user=os.environ)
    peak_before = numpy_gemm_peak()
    paddle.seed(args.seed)
    model, cfg = build_model(args.model)
    model.eval()
    rng = np.random.default_rng(args.seed)
    counts = box_counts(rng, args.questions, args.n_min, args.n_max, args.n100)
    # one pool of per-question inputs; batches are cut from it and padded to their own largest n
    feats, boxes, qids, _ = make_batch(rng, counts, answer_size=1)
    random_order = rng.permutation(args.questions)
    sorted_order = np.argsort(counts, kind="stable")

    def batch_of(idx):
        n = int(counts[idx].max())
        return feats[idx, :n], boxes[idx, :n], qids[idx]

    check = batch_of(random_order[:min(args.batch, 64)])  # mixed n, padded
    names = [e for e in args.engines.split(",") if e]
    engines, skipped = build_engines(names, model, cfg, threads)
    reference = engines["dygraph"](*check) if "dygraph" in engines else None
    checks = {}
    for name, run in engines.items():  # also the warm-up of each engine
        out = run(*check)
        if reference is None:
            continue
        diff = float(np.abs(out - reference).max())
        agree = float((out.argmax(1) == reference.argmax(1)).mean())
        checks[name] = {"max_abs_logit_diff_vs_dygraph": diff, "top1_agreement_vs_dygraph": agree}
        if "bf16" not in name and not diff < 1e-4:
            raise SystemExit(f"error: engine {name} differs from the dygraph model by {diff:.3g} (max abs "
                             f"logit) on the check batch; it is not the same network, nothing was timed")

    one = GEMM_SHAPES[:1]
    best = {}
    for _ in range(args.repeats):
        for name, run in engines.items():
            orders = {"sorted": sorted_order}
            if name in ORDERED_AND_RANDOM and not args.n100:
                orders["random"] = random_order
            for label, order in orders.items():
                peak = numpy_gemm_peak(reps=3, shapes=one)["peak"]
                start = time.perf_counter()
                for i in range(0, len(order), args.batch):
                    run(*batch_of(order[i:i + args.batch]))
                seconds = time.perf_counter() - start
                if (name, label) not in best or seconds < best[name, label][0]:
                    best[name, label] = (seconds, peak)
    peak_after = numpy_gemm_peak()

    def flops(order, padded):
        return sum(batch_flops(cfg, counts[order[i:i + args.batch]], train=False, padded=padded)
                   for i in range(0, len(order), args.batch))

    useful = flops(sorted_order, padded=False)
    results = {}
    for name in engines:
        seconds, peak = best[name, "sorted"]
        r = {"samples_per_s_sorted": round(args.questions / seconds, 2),
             "useful_gflops_sorted": round(useful / seconds / 1e9, 1),
             "numpy_gemm_gflops_before": round(peak, 1),
             "useful_fraction_of_peak_sorted": round(useful / seconds / 1e9 / peak, 3), **checks.get(name, {})}
        if (name, "random") in best:
            r["samples_per_s_random"] = round(args.questions / best[name, "random"][0], 2)
            r["ordering_speedup"] = round(best[name, "random"][0] / seconds, 3)
        results[name] = r
    rate = {name: r["samples_per_s_sorted"] for name, r in results.items()}
    ratios = {}
    for base in ("torch", "torch_bf16", "dygraph"):
        for name in rate:
            if base in rate and name != base:
                ratios[f"{name}/{base}"] = round(rate[name] / rate[base], 3)
    paddle_engines = [n for n in ("dygraph", "inference", "inference_bf16") if n in rate]
    if paddle_engines:
        fastest = max(paddle_engines, key=rate.get)
        ratios["fastest_paddle_engine"] = fastest
        for base in ("torch", "torch_bf16"):
            if base in rate:
                ratios[f"fastest_paddle/{base}"] = round(rate[fastest] / rate[base], 3)
    result = {
        "bench": "eval", "model": args.model, "batch": args.batch, "questions": args.questions,
        "n": f"{args.n_max}" if args.n100 else f"{args.n_min}..{args.n_max}",
        "mean_n": round(float(counts.mean()), 1), "defaults": args.defaults, "repeats": args.repeats,
        "threads": threads, "cpu": cpu_info(), "engines": results, "skipped": skipped, "ratios": ratios,
        "useful_gflop_per_sample": round(useful / args.questions / 1e9, 3),
        "padding_efficiency_sorted": round(useful / flops(sorted_order, True), 3),
        "padding_efficiency_random": round(useful / flops(random_order, True), 3),
        "numpy_gemm_best_peak_gflops": round(max(peak_before["peak"], peak_after["peak"],
                                                 *(p for _, p in best.values())), 1),
        "paddle_matmul_gflops_6400x512x2048": paddle_matmul_rate(),
        "numpy_gemm": {"before": peak_before, "after": peak_after},
        "settings": runtime_settings(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
