"""Does the synthetic dataset test what matters? Train the tiny model intact, with the padding
mask switched off, and with the box relation embedding switched off, and report val accuracy
overall and per question family. Prints one JSON line.

    python bench/synthetic_ablation.py [--epochs 16] [--train-images 800] [--out /tmp/mmnas_ablation]
                                       [--world spatial|original] [--variants intact,no_relation]

The default "spatial" world asks mostly box-dependent questions (SPATIAL_FAMILY_WEIGHTS), often
has one dominant object, and keeps filler regions small and few, so that the one RSA layer of
the tiny model has a chance to learn them; "original" is the generator's default world.

A correct model must beat the majority-answer baseline by far; the broken variants must lose
accuracy, most visibly on the families that need them (counting for the mask; size and
nearest-object questions for the relation embedding).
"""
import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.configure()  # threads, MKL, and Paddle's known warnings filtered (before Paddle is imported)

import paddle  # noqa: E402

import mmnas.models.mmnasnet as mmnasnet  # noqa: E402
from mmnas.config import load_config  # noqa: E402
from mmnas.data.synthetic import RELATION_FAMILIES, SPATIAL_FAMILY_WEIGHTS, make_synthetic_vqa  # noqa: E402
from mmnas.engine.train import train  # noqa: E402
from mmnas.metrics import evaluate  # noqa: E402


def no_mask(region_feats):
    """Every region counts as real: padding rows take part in attention and pooling."""
    return paddle.zeros([region_feats.shape[0], 1, 1, region_feats.shape[1]], dtype="bool")


def no_relation(boxes):
    """The relation geometry carries no information about the boxes."""
    return paddle.zeros([boxes.shape[0], boxes.shape[1], boxes.shape[1], 4], dtype=boxes.dtype)


VARIANTS = {"intact": {}, "no_mask": {"make_mask": no_mask}, "no_relation": {"box_relation_geometry": no_relation}}

COUNT_FAMILIES = ("count_category", "count_colour", "count_all")

# Generator options per world (see make_synthetic_vqa).
WORLDS = {
    "original": dict(min_boxes=10, max_boxes=36),
    "spatial": dict(min_boxes=4, max_boxes=12, family_weights=SPATIAL_FAMILY_WEIGHTS,
                    dominant_object_prob=0.7, filler_max_scale=0.3),
}


def per_family(scores, truth):
    by_family = collections.defaultdict(list)
    for qid, acc in scores["per_question"].items():
        by_family[truth["question_family"][str(qid)]].append(acc)
    return {family: round(sum(v) / len(v), 2) for family, v in sorted(by_family.items())}


def on_families(scores, truth, families):
    """Accuracy over all questions of the given families together."""
    accs = [acc for qid, acc in scores["per_question"].items() if truth["question_family"][str(qid)] in families]
    return round(sum(accs) / len(accs), 2) if accs else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/mmnas_ablation")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", choices=sorted(WORLDS), default="spatial")
    p.add_argument("--questions-per-image", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of " + ", ".join(VARIANTS))
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    data_root = os.path.join(args.out, "data")
    make_synthetic_vqa(data_root, n_train_images=args.train_images, n_val_images=args.val_images,
                       n_test_images=20, n_vg_images=20, questions_per_image=args.questions_per_image,
                       seed=args.seed, **WORLDS[args.world])
    raw = os.path.join(data_root, "vqa", "raw")
    train_ann = json.load(open(os.path.join(raw, "v2_mscoco_train2014_annotations.json")))["annotations"]
    val_ann = json.load(open(os.path.join(raw, "v2_mscoco_val2014_annotations.json")))["annotations"]
    truth = json.load(open(os.path.join(data_root, "vqa", "synthetic_truth.json")))
    majority = collections.Counter(a["multiple_choice_answer"] for a in train_ann).most_common(1)[0][0]
    baseline = evaluate(val_ann, {a["question_id"]: majority for a in val_ann})

    report = {"bench": "synthetic_ablation", "world": args.world, "epochs": args.epochs,
              "train_questions": len(train_ann),
              "val_questions": len(val_ann), "majority_answer": majority, "majority_baseline": baseline["overall"]}
    for name in variants:
        patches = VARIANTS[name]
        originals = {attr: getattr(mmnasnet, attr) for attr in patches}
        for attr, fn in patches.items():
            setattr(mmnasnet, attr, fn)
        try:
            cfg = load_config("tiny")
            cfg.version = f"ablation_{name}"
            cfg.data.data_root, cfg.data.split, cfg.data.preload = data_root, "train", True
            cfg.data.cache_dir = os.path.join(args.out, "results", "cache")
            cfg.ckpt_dir, cfg.results_dir = os.path.join(args.out, "ckpt"), os.path.join(args.out, "results")
            cfg.train.max_epoch = args.epochs
            cfg.train.lr_decay_epochs = [max(1, args.epochs - 2)]  # decay for the last two epochs
            start = time.time()
            summary = train(cfg, progress=False)
        finally:
            for attr, fn in originals.items():
                setattr(mmnasnet, attr, fn)
        scores = summary["history"][-1]["val"]
        report[name] = {"overall": scores["overall"], "per_answer_type": scores["per_answer_type"],
                        "per_family": per_family(scores, truth),
                        "relation_families": on_families(scores, truth, RELATION_FAMILIES),
                        "count_families": on_families(scores, truth, COUNT_FAMILIES),
                        "seconds": round(time.time() - start, 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
