"""Write a small synthetic GQA (balanced question files, choices, region features) in the layout
of the openvqa GQA release.

    python tools/make_synthetic_gqa.py                      # -> ./data/gqa/, seed 0
    python tools/make_synthetic_gqa.py --out /tmp/synth --train-images 200 --val-images 50

The world is that of the synthetic VQA-v2 (mmnas/data/synthetic.py); the files follow GQA
(mmnas/data/synthetic_gqa.py). Same arguments, same bytes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (this tool never imports Paddle)

from mmnas.data.synthetic_gqa import make_synthetic_gqa  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate a synthetic GQA under <out>/gqa/ in the real layout.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="./data", help="data root; files go to <out>/gqa/")
    p.add_argument("--seed", type=int, default=0, help="everything is a deterministic function of this")
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--testdev-images", type=int, default=200)
    p.add_argument("--test-images", type=int, default=100,
                   help="extra images whose questions appear only in submission_all (unanswered)")
    p.add_argument("--questions-per-image", type=int, default=5)
    p.add_argument("--min-boxes", type=int, default=10)
    p.add_argument("--max-boxes", type=int, default=36)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        s = make_synthetic_gqa(args.out, args.train_images, args.val_images, args.testdev_images, args.test_images,
                               args.questions_per_image, args.seed, args.min_boxes, args.max_boxes,
                               progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    q = s["questions"]
    print(f"synthetic GQA in {s['gqa_root']}: seed {s['seed']}, questions train {q['train']} / val {q['val']} / "
          f"testdev {q['testdev']} / test only {q['test_only']}, boxes {s['boxes']['min']}..{s['boxes']['max']}, "
          f"val majority answer {s['val_majority_answer']!r} ({100 * s['val_majority_share']:.1f}%), "
          f"{s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
