"""Write a small synthetic RefCOCO ("find the red cup") in the layout of the MMnas reference.

    python tools/make_synthetic_refcoco.py                         # -> ./data/vgd/, seed 0
    python tools/make_synthetic_refcoco.py --out /tmp/synth --feat-size 32 --train-images 500

The world (coloured shapes, expressions naming a unique one, GT boxes offset from the proposal
by a shape-specific amount) is described in mmnas/data/synthetic_refcoco.py. Same arguments,
same bytes. The features are --feat-size wide: keep 2048 for the shipped configs, or set
model.feat_size to the same width.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (before the data modules import Paddle)

from mmnas.data.synthetic_refcoco import make_synthetic_refcoco  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Generate a synthetic referring-expression dataset under <out>/vgd/ (bua-r101-fix100/*.npz, "
                    "<dataset>/<split>.json) in exactly the layout of the MMnas reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="./data", help="data root; files go to <out>/vgd/")
    p.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"],
                   help="which dataset's split files to write (refcocog: train, val, test)")
    p.add_argument("--seed", type=int, default=0, help="everything is a deterministic function of this")
    p.add_argument("--train-images", type=int, default=1000, help="images of the train split")
    p.add_argument("--eval-images", type=int, default=150, help="images of each evaluation split")
    p.add_argument("--expressions-per-image", type=int, default=2, help="expressions per image (fewer when "
                   "an image has fewer regions of a unique colour and shape)")
    p.add_argument("--min-regions", type=int, default=8, help="fewest regions per image")
    p.add_argument("--max-regions", type=int, default=8, help="most regions per image")
    p.add_argument("--feat-size", type=int, default=2048, help="feature width (model.feat_size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = make_synthetic_refcoco(
            args.out, dataset=args.dataset, n_train_images=args.train_images, n_eval_images=args.eval_images,
            expressions_per_image=args.expressions_per_image, seed=args.seed, min_regions=args.min_regions,
            max_regions=args.max_regions, feat_size=args.feat_size, progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{part} {n}" for part, n in summary["expressions"].items())
    chance = ", ".join(f"{part} {c:.1f}" for part, c in summary["chance"].items())
    print(f"synthetic {summary['dataset']} in {summary['vgd_root']}: seed {summary['seed']}, expressions {counts}; "
          f"chance accuracy (%) {chance}; IoU of the named proposal with its GT box {summary['raw_iou']:.2f}; "
          f"{summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
