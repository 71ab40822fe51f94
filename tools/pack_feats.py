"""Pack a folder of bottom-up-attention .npz feature files into one memory-mapped store.

    python tools/pack_feats.py data/vqa/feats/train2014 data/vqa/feats/val2014 [--dtype float16]
    python tools/pack_feats.py --data-root data            # every folder under data/vqa/feats/
    python tools/pack_feats.py data/gqa/feats/gqa-frcn --dataset gqa

Each folder F becomes F.packed/ (feats.bin + index.npz, see mmnas/data/packed.py), or
<--out>/<name>.packed/ with --out; the dataset then reads from it instead of the .npz files
(pass the same folder as packed root to the dataset when using --out). Every file is validated
as training would (shape, NaN/inf, inverted boxes); the first bad file stops the packing with
its name. float16 (default) halves disk and RAM; --dtype float32 keeps values bit-exact.
Re-run after changing feature files: the dataset warns when a store is older than its folder.
"""
import argparse
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered (this tool never imports Paddle)

from mmnas.data.features import DataError, feature_index, load_npz  # noqa: E402
from mmnas.data.packed import store_dir_for, write_store  # noqa: E402


def pack_folder(folder: str, out_root=None, dtype: str = "float16", workers: int = 8, progress: bool = True,
                dataset: str = "vqa"):
    """dataset: the layout of the files, "vqa" (COCO_..._<id>.jpg.npz, x [2048, n]) or "gqa"
    (<imageId>.npz, x [n, 2048])."""
    if dataset == "gqa":
        if not os.path.isdir(folder):
            raise DataError(f"feature folder {folder} does not exist")
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".npz"))
    else:
        paths = sorted(feature_index(folder).values(), key=os.path.basename)  # validates file names
    load = functools.partial(load_npz, regions_first=dataset == "gqa")
    out_dir = store_dir_for(folder, out_root)
    done = [0]
    start = time.time()

    def tick():
        done[0] += 1
        if progress and (done[0] % 1000 == 0 or done[0] == len(paths)):
            rate = done[0] / max(time.time() - start, 1e-9)
            print(f"\r{os.path.basename(folder)}: {done[0]}/{len(paths)} images ({rate:.0f}/s)",
                  end="", file=sys.stderr, flush=True)

    def entries():
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, (feats, boxes) in zip(paths, pool.map(load, paths)):
                yield os.path.basename(path), feats, boxes, os.path.getsize(path)

    summary = write_store(out_dir, entries(), dtype=dtype, progress=tick)
    if progress:
        print(file=sys.stderr)
    summary["folder"] = os.path.abspath(folder)
    summary["seconds"] = round(time.time() - start, 2)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", help="feature folders holding .npz files")
    p.add_argument("--data-root", help="pack every folder under <data-root>/vqa/feats/")
    p.add_argument("--out", help="write <out>/<folder name>.packed instead of beside each folder")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--workers", type=int, default=8, help="reader threads")
    p.add_argument("--dataset", choices=["vqa", "gqa"], default="vqa", help="layout of the feature files")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    folders = list(args.folders)
    if args.data_root:
        feats = os.path.join(args.data_root, "vqa", "feats")
        if not os.path.isdir(feats):
            p.error(f"{feats} does not exist")
        folders += sorted(os.path.join(feats, d) for d in os.listdir(feats)
                          if os.path.isdir(os.path.join(feats, d)) and not d.endswith(".packed"))
    if not folders:
        p.error("name feature folders or --data-root")
    try:
        for folder in folders:
            print(json.dumps(pack_folder(folder, args.out, args.dtype, args.workers, not args.quiet,
                                         args.dataset)))
    except (DataError, ValueError) as e:
        print(f"pack_feats: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
