"""Check a folder of region-feature .npz files before training on it.

    python tools/check_feats.py data/vqa/feats/val2014 \
        --questions data/vqa/raw/v2_OpenEnded_mscoco_val2014_questions.json
    python tools/check_feats.py data/vqa/feats/train2014 data/vqa/feats/val2014 \
        --questions data/vqa/raw/VG_questions.json      # VG asks about train and val images
    python tools/check_feats.py data/gqa/feats/gqa-frcn --dataset gqa \
        --questions data/gqa/raw/questions1.2/val_balanced_questions.json
    python tools/check_feats.py data/vgd/bua-r101-fix100 --dataset vgd     # grounding (itm: matching)

Exit status 0: nothing would break training; 1: something would (unreadable or malformed
files, NaN/inf, bad boxes, images asked about without features); 2: bad arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (this tool never imports Paddle)

from mmnas.data.check_feats import LAYOUTS, USUAL_MIN_REGIONS, check_feats, format_report  # noqa: E402
from mmnas.data.features import FEAT_DIM, MAX_REGIONS  # noqa: E402


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except None (the help says what an option left out means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Scan region-feature .npz files (VQA-v2 or GQA layout) for anything that would "
                    "break training, write a JSON report and a PNG histogram of box counts.",
        formatter_class=DefaultsFormatter)
    p.add_argument("feat_dir", nargs="+", help="feature folder(s), e.g. data/vqa/feats/train2014")
    p.add_argument("--questions", nargs="+", default=None, metavar="JSON",
                   help="question or annotation files: report image ids they ask about that have no "
                        "feature file, and feature files they never ask about")
    p.add_argument("--dataset", choices=sorted(LAYOUTS), default="vqa",
                   help="layout of the files: vqa (x [2048, n]), gqa (x [n, 2048], <imageId>.npz), or the "
                        "grounding (vgd) and matching (itm) features (as vqa, without num_bbox)")
    p.add_argument("--workers", type=int, default=2, help="processes reading files")
    p.add_argument("--report", default=None,
                   help="JSON report path (results/check_feats/<folder name>.json when not given)")
    p.add_argument("--png", default=None, help="box-count histogram (the report path with .png when not given)")
    p.add_argument("--no-png", action="store_true", help="do not draw the histogram")
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS,
                   help="more boxes than this is an error (use the config's model.max_regions)")
    p.add_argument("--feat-size", type=int, default=FEAT_DIM,
                   help="width of a region feature; another width is an error (use the config's model.feat_size)")
    p.add_argument("--min-regions", type=int, default=USUAL_MIN_REGIONS,
                   help="fewer boxes than this is a warning (fewer than 1 is an error)")
    p.add_argument("--box-tolerance", type=float, default=1.0,
                   help="pixels a box may stick out of the image before it counts as bad")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    name = "+".join(os.path.basename(os.path.normpath(d)) for d in args.feat_dir)
    report_path = args.report or os.path.join("results", "check_feats", f"{name}.json")
    png_path = None if args.no_png else (args.png or os.path.splitext(report_path)[0] + ".png")
    try:
        report = check_feats(args.feat_dir, question_files=args.questions, workers=args.workers,
                             report_path=report_path, png_path=png_path, progress=not args.quiet,
                             max_regions=args.max_regions, feat_size=args.feat_size,
                             min_regions=args.min_regions, box_tolerance=args.box_tolerance,
                             dataset=args.dataset)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"report: {report_path}" + (f", histogram: {png_path}" if png_path else ""))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
