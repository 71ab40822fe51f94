"""Search on the synthetic dataset, then train the found and the published genotype alike.

The synthetic questions about size and nearness can only be answered from the boxes (RSA) and
every question needs the image read in the light of the question (GA), so a working search
should put RSA/GA into the decoder. Then both genotypes are trained with the same tiny recipe
(configs/vqa/mmnasnet_tiny.yml widths, the full 12 + 18 positions) and scored on val.

Prints ONE JSON line: the search algorithm, the found genotype and its GFLOPs (forward, per
sample at n = 100, at MMNasNet-small's width), whether its decoder holds RSA or GA, the search
time, both val accuracies, their difference and whether it is within --margin points. Not a
timed test: the defaults take roughly 10-15 minutes on 2 CPU cores.

    python bench/search_synthetic.py [--algorithm binary_gate|snas] [--budget-gflops 4.0]
                                     [--train-images 600] [--search-epochs 10] [--margin 3.0]
"""
import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.configure()  # threads, MKL, and Paddle's known warnings filtered (before Paddle is imported)

from mmnas.config import CONFIG_DIR, load_config, read_genotype  # noqa: E402
from mmnas.data.synthetic import make_synthetic_vqa  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default=None, help="where data, checkpoints and results go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (default: delete a temp one)")
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--questions-per-image", type=int, default=5)
    p.add_argument("--min-boxes", type=int, default=6)
    p.add_argument("--max-boxes", type=int, default=12)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--algorithm", default="binary_gate", choices=["binary_gate", "snas"],
                   help="search strategy: configs/search/search_vqa_tiny.yml or search_vqa_snas_tiny.yml")
    p.add_argument("--budget-gflops", type=float, default=None,
                   help="search.budget_gflops: the genotype must fit this many GFLOPs (n = 100, small width)")
    p.add_argument("--flops-weight", type=float, default=0.0, help="search.flops_weight (expected-GFLOPs penalty)")
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--search-warmup", type=int, default=4, help="binary_gate: weight-only epochs before arch steps")
    p.add_argument("--arch-every", type=int, default=2, help="binary_gate: weight steps per architecture step")
    p.add_argument("--no-published", action="store_true", help="do not train the published genotype")
    p.add_argument("--train-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=888)
    p.add_argument("--margin", type=float, default=3.0, help="accepted val accuracy gap (points)")
    return p.parse_args(argv)


def run_configs(args, work):
    """(search config, training config) sharing data, seeds and output folders."""
    search_cfg = load_config("search_snas_tiny" if args.algorithm == "snas" else "search_tiny")
    train_cfg = load_config("tiny")
    for cfg in (search_cfg, train_cfg):
        cfg.data.data_root, cfg.data.split, cfg.data.preload = os.path.join(work, "data"), "train", True
        cfg.data.cache_dir = os.path.join(work, "results", "cache")
        cfg.ckpt_dir, cfg.results_dir = os.path.join(work, "ckpt"), os.path.join(work, "results")
        cfg.train.seed = args.seed
    search_cfg.version = "search"
    search_cfg.train.max_epoch = args.search_epochs
    search_cfg.search.warmup_epochs = args.search_warmup
    search_cfg.search.arch_every = args.arch_every
    search_cfg.search.budget_gflops = args.budget_gflops
    search_cfg.search.flops_weight = args.flops_weight
    search_cfg.search.validate()
    train_cfg.train.max_epoch = args.train_epochs
    train_cfg.train.eval_every_epoch = True
    return search_cfg, train_cfg


def train_genotype(train_cfg, genotype, version):
    from mmnas.engine.train import train
    cfg = copy.deepcopy(train_cfg)
    cfg.version = version
    cfg.model.enc, cfg.model.dec = list(genotype["enc"]), list(genotype["dec"])
    cfg.model.validate()
    start = time.time()
    history = train(cfg, progress=False)["history"]
    scores = [h["val"]["overall"] for h in history]
    return {"val_overall": scores[-1], "val_best": max(scores), "val_per_epoch": scores,
            "seconds": round(time.time() - start, 1)}


def main(argv=None):
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="mmnas_search_bench_")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the runs' own lines; stdout gets the JSON only
            result = run(args, work)
        print(json.dumps(result))
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    start = time.time()
    data = make_synthetic_vqa(os.path.join(work, "data"), n_train_images=args.train_images,
                              n_val_images=args.val_images, n_test_images=1, n_vg_images=1,
                              questions_per_image=args.questions_per_image, seed=args.data_seed,
                              min_boxes=args.min_boxes, max_boxes=args.max_boxes, workers=2)
    data_seconds = time.time() - start
    search_cfg, train_cfg = run_configs(args, work)

    from mmnas.engine.search import search
    from mmnas.search.budget import genotype_gflops
    start = time.time()
    summary = search(search_cfg, progress=False)
    search_seconds = time.time() - start
    last = summary["history"][-1]
    found = read_genotype(summary["genotype_path"])
    published = read_genotype(os.path.join(CONFIG_DIR, "genotypes", "mmnasnet_vqa.json"))

    found_run = train_genotype(train_cfg, found, "found")
    published_run = None if args.no_published else train_genotype(train_cfg, published, "published")
    gap = None if published_run is None else found_run["val_overall"] - published_run["val_overall"]
    dec = found["dec"]
    result = {
        "bench": "search_synthetic",
        "algorithm": args.algorithm,
        "data": {"train_questions": data["questions"]["train"], "val_questions": data["questions"]["val"],
                 "boxes": f"{args.min_boxes}..{args.max_boxes}", "seconds": round(data_seconds, 1)},
        "search": {"epochs": args.search_epochs, "hidden_size": search_cfg.model.hidden_size,
                   **({"warmup_epochs": args.search_warmup, "arch_every": args.arch_every}
                      if args.algorithm == "binary_gate" else
                      {"tau": [search_cfg.search.tau_start, search_cfg.search.tau_end, search_cfg.search.tau_anneal],
                       "arch_lr": search_cfg.search.arch_lr}),
                   "budget_gflops": args.budget_gflops, "flops_weight": args.flops_weight,
                   "seconds": round(search_seconds, 1), "arch_steps": sum(h["arch_steps"] for h in summary["history"]),
                   "top_path_score": last.get("top_path_score")},
        "genotype": found,
        "gflops": last["gflops"],
        "expected_gflops": last["expected_gflops"],
        "argmax_gflops": last.get("argmax_gflops"),
        "published_gflops": round(genotype_gflops(load_config("small").model, published), 4),
        "decoder_counts": {op: dec.count(op) for op in ("SA", "GA", "RSA", "FFN")},
        "decoder_has_rsa_or_ga": any(op in ("RSA", "GA") for op in dec),
        "found": found_run,
        "published": published_run,
        "gap_points": None if gap is None else round(gap, 2),
        "margin_points": args.margin,
        "within_margin": None if gap is None else gap >= -args.margin,
    }
    if args.keep or args.work_dir:
        result["work_dir"] = work
    return result


if __name__ == "__main__":
    main()
