"""Write a small synthetic Flickr30K (captions, ids, Karpathy JSON, region features) in the
reference layout under <out>/itm/.

    python tools/make_synthetic_flickr.py                        # -> ./data/itm/, seed 0, 2048-d features
    python tools/make_synthetic_flickr.py --out /tmp/synth --feat-size 32   # small files; set model.feat_size: 32

The world ("a red cup and a blue dog") is described in mmnas/data/synthetic_flickr.py. Same
arguments, same bytes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (before the data modules import Paddle)

from mmnas.data.synthetic_flickr import make_synthetic_flickr  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate a synthetic Flickr30K under <out>/itm/ in the layout of "
                                            "the reference (MILVLG/mmnas).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="./data", help="data root; files go to <out>/itm/")
    p.add_argument("--seed", type=int, default=0, help="everything is a deterministic function of this")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--dev-images", type=int, default=50)
    p.add_argument("--test-images", type=int, default=50)
    p.add_argument("--objects", type=int, default=3, help="objects per image (spec 5.3: 3 learns on a CPU)")
    p.add_argument("--types", type=int, default=4, help="colours = shapes = this; object types = its square")
    p.add_argument("--feat-size", type=int, default=2048,
                   help="region feature width (the real features: 2048; a smaller one needs model.feat_size)")
    p.add_argument("--overwrite", action="store_true", help="replace an <out>/itm/ that is NOT marked synthetic")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        s = make_synthetic_flickr(args.out, args.train_images, args.dev_images, args.test_images, args.objects,
                                  args.types, args.feat_size, args.seed, args.overwrite, progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"synthetic Flickr30K in {s['itm_root']}: seed {s['seed']}, images train {s['images']['train']} / "
          f"dev {s['images']['dev']} / test {s['images']['test']} (5 captions each), {s['n_objects']} objects "
          f"of {s['n_types']}x{s['n_types']} types, {s['feat_size']}-d features, {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
