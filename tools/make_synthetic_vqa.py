"""Write a small synthetic VQA-v2 (questions, annotations, region features) in the real layout.

    python tools/make_synthetic_vqa.py                      # -> ./data/vqa/, seed 0
    python tools/make_synthetic_vqa.py --out /tmp/synth --train-images 200 --val-images 50

The world (coloured objects whose size and distance questions need the boxes) is described in
mmnas/data/synthetic.py. Same arguments, same bytes. Each image is also drawn as a PNG under
<out>/vqa/images/<split folder>/ (--no-pictures skips them).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (this tool never imports Paddle)

from mmnas.data.synthetic import make_synthetic_vqa  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Generate a synthetic VQA-v2 dataset under <out>/vqa/ (raw/*.json, feats/*/*.npz) "
                    "in exactly the layout of the real files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="./data", help="data root; files go to <out>/vqa/")
    p.add_argument("--seed", type=int, default=0, help="everything is a deterministic function of this")
    p.add_argument("--train-images", type=int, default=1500, help="train2014 images")
    p.add_argument("--val-images", type=int, default=300, help="val2014 images")
    p.add_argument("--test-images", type=int, default=200, help="test2015 images (questions only)")
    p.add_argument("--vg-images", type=int, default=200,
                   help="train/val images that get extra VG_questions.json / VG_annotations.json questions")
    p.add_argument("--questions-per-image", type=int, default=5, help="questions asked about each image")
    p.add_argument("--min-boxes", type=int, default=10, help="fewest regions per image")
    p.add_argument("--max-boxes", type=int, default=36,
                   help="most regions per image (up to 100, like the real features)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes writing feature files (does not change the output)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset in <out>/vqa/ that is NOT marked synthetic "
                        "(a previous synthetic one is always replaced)")
    p.add_argument("--no-pictures", action="store_true",
                   help="skip the PNG picture of each image (<out>/vqa/images/<split>/COCO_<split>_<id>.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = make_synthetic_vqa(
            args.out, n_train_images=args.train_images, n_val_images=args.val_images,
            n_test_images=args.test_images, n_vg_images=args.vg_images,
            questions_per_image=args.questions_per_image, seed=args.seed, min_boxes=args.min_boxes,
            max_boxes=args.max_boxes, workers=args.workers, overwrite=args.overwrite,
            pictures=not args.no_pictures, progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    q, b = summary["questions"], summary["boxes"]
    print(f"synthetic VQA-v2 in {summary['vqa_root']}: seed {summary['seed']}, "
          f"questions train {q['train']} / val {q['val']} / test {q['test']} / vg {q['vg']}, "
          f"{summary['answers_over_threshold']} answers seen >8 times, "
          f"boxes {b['min']}..{b['max']} (mean {b['mean']:.1f}), "
          f"{summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
