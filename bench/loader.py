"""Data loader throughput: items/s through paddle.io.DataLoader with PRELOAD on/off and 0/2 workers,
from the .npz files and from a packed store (tools/pack_feats.py; --packed-dtype, --no-packed).

Generates its own data of real shape (2048-d regions, 10..100 boxes per image) in a temp dir,
then prints ONE JSON line. Files were just written, so they sit in the page cache: this
measures decoding + validation + collation, not disk speed.

    python bench/loader.py [--questions 2000] [--questions-per-image 5] [--workers 0,2]

Keys: lazy_* / preload_* read .npz files; packed_lazy_* / packed_preload_* read the packed store
(written after the .npz runs, so also in the page cache); *_MB_per_1000_images is the memory
PRELOAD holds per 1,000 images of this data (mean n boxes), for both sources.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

if "--defaults" not in sys.argv:  # as run.py: threads, MKL path, malloc keeping freed memory
    runtime.configure()
else:
    runtime.filter_paddle_noise()  # Paddle's own settings, without its known warnings

import paddle  # noqa: E402

from mmnas.data.dataset import VQADataset  # noqa: E402
from mmnas.data.regions import collate_batch  # noqa: E402
from mmnas.data.vocab import build_vocab  # noqa: E402


def write_plain_dataset(root, n_images, questions_per_image, min_boxes, max_boxes, seed=0):
    """Fallback without mmnas.data.synthetic: random features, train + a small val split."""
    rng = np.random.default_rng(seed)
    answers = ["yes", "no", "2", "red", "dog"]
    for split, folder, count in (("train", "train2014", n_images), ("val", "val2014", max(1, n_images // 10))):
        os.makedirs(os.path.join(root, "vqa", "feats", folder), exist_ok=True)
        os.makedirs(os.path.join(root, "vqa", "raw"), exist_ok=True)
        questions, annotations = [], []
        for image_id in range(1, count + 1):
            n = int(rng.integers(min_boxes, max_boxes + 1))
            x1y1 = rng.uniform(0, 400, (n, 2))
            np.savez_compressed(os.path.join(root, "vqa", "feats", folder, f"COCO_{folder}_{image_id:012d}.jpg.npz"),
                                x=np.maximum(rng.standard_normal((2048, n)), 0).astype(np.float32),
                                bbox=np.concatenate([x1y1, x1y1 + rng.uniform(1, 200, (n, 2))], 1).astype(np.float32),
                                image_h=np.int64(480), image_w=np.int64(640), num_bbox=np.int64(n))
            for k in range(questions_per_image):
                qid = image_id * 1000 + k
                answer = answers[int(rng.integers(len(answers)))]
                questions.append({"image_id": image_id, "question": f"is the thing number {k} here?",
                                  "question_id": qid})
                annotations.append({"question_id": qid, "image_id": image_id, "question_type": "is the",
                                    "answer_type": "other", "multiple_choice_answer": answer,
                                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                                for i in range(10)]})
        with open(os.path.join(root, "vqa", "raw", f"v2_OpenEnded_mscoco_{folder}_questions.json"), "w") as f:
            json.dump({"questions": questions}, f)
        with open(os.path.join(root, "vqa", "raw", f"v2_mscoco_{folder}_annotations.json"), "w") as f:
            json.dump({"annotations": annotations}, f)


def make_data(root, args):
    n_images = max(1, args.questions // args.questions_per_image)
    try:
        from mmnas.data.synthetic import make_synthetic_vqa
    except ImportError:
        write_plain_dataset(root, n_images, args.questions_per_image, args.min_boxes, args.max_boxes)
        return "plain"
    # workers=1: a multiprocessing pool forked after `import paddle` inherits paddle's signal
    # handlers, and its children print a paddle "FatalError" to stdout when the pool stops them.
    make_synthetic_vqa(root, n_train_images=n_images, n_val_images=max(1, n_images // 10), n_test_images=0,
                       n_vg_images=0, questions_per_image=args.questions_per_image,
                       min_boxes=args.min_boxes, max_boxes=args.max_boxes, workers=1)
    return "mmnas.data.synthetic"


def items_per_second(dataset, batch_size, num_workers, epochs):
    loader = paddle.io.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=False,
                                  num_workers=num_workers, collate_fn=collate_batch)
    items = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for region_feats, boxes, question_ids, answer_scores, index in loader:
            items += int(index.shape[0])
    return items / (time.perf_counter() - start)


def measure_packed(root, vocab, args, workers, result):
    """Pack the train features, then the same measurements reading from the store."""
    from tools.pack_feats import pack_folder
    start = time.perf_counter()
    summary = pack_folder(os.path.join(root, "vqa", "feats", "train2014"), dtype=args.packed_dtype,
                          workers=args.preload_workers, progress=False)
    result["pack_s"] = round(time.perf_counter() - start, 3)
    result["packed_dtype"] = args.packed_dtype
    for preload in (False, True):
        start = time.perf_counter()
        dataset = VQADataset(root, "train", vocab, preload=preload, preload_workers=args.preload_workers,
                             progress=False)
        if dataset.packed_images != dataset.num_images:
            raise RuntimeError(f"only {dataset.packed_images} of {dataset.num_images} images come from the store")
        tag = "packed_preload" if preload else "packed_lazy"
        result[f"{tag}_build_s"] = round(time.perf_counter() - start, 3)
        for num_workers in workers:
            result[f"{tag}_workers{num_workers}_items_per_s"] = round(
                items_per_second(dataset, args.batch_size, num_workers, args.epochs), 1)
        if preload:
            per_image = dataset.preloaded_bytes / dataset.num_images
            result["packed_preload_MB_per_1000_images"] = round(per_image * 1000 / 2 ** 20, 1)
            if result.get("preload_MB_per_1000_images"):
                result["packed_preload_RAM_ratio"] = round(
                    result["packed_preload_MB_per_1000_images"] / result["preload_MB_per_1000_images"], 3)
    result["packed_store_MB"] = round(summary["bytes"] / 2 ** 20, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=2000, help="training questions to generate")
    parser.add_argument("--questions-per-image", type=int, default=5)
    parser.add_argument("--min-boxes", type=int, default=10)
    parser.add_argument("--max-boxes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader num_workers values")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the data per measurement")
    parser.add_argument("--preload-workers", type=int, default=8)
    parser.add_argument("--packed-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--no-packed", action="store_true", help="skip the packed-store measurements")
    parser.add_argument("--defaults", action="store_true", help="skip mmnas.runtime.configure()")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="mmnas_bench_loader_") as tmp:
        root = os.path.join(tmp, "data")
        start = time.perf_counter()
        generator = make_data(root, args)
        generate_s = time.perf_counter() - start
        vocab = build_vocab(root, os.path.join(tmp, "cache"), progress=False)

        result = {"bench": "loader", "generator": generator, "batch_size": args.batch_size, "epochs": args.epochs}
        for preload in (False, True):
            start = time.perf_counter()
            dataset = VQADataset(root, "train", vocab, preload=preload, preload_workers=args.preload_workers,
                                 progress=False)
            build_s = time.perf_counter() - start
            tag = "preload" if preload else "lazy"
            result[f"{tag}_build_s"] = round(build_s, 3)
            for num_workers in workers:
                result[f"{tag}_workers{num_workers}_items_per_s"] = round(
                    items_per_second(dataset, args.batch_size, num_workers, args.epochs), 1)
            if preload:
                counts = dataset.box_counts
                per_image = dataset.preloaded_bytes / dataset.num_images
                result.update({
                    "questions": len(dataset), "images": dataset.num_images,
                    "mean_boxes_per_image": round(float(dataset._image_box_counts.mean()), 1),
                    "box_range": [int(counts.min()), int(counts.max())],
                    "preload_MB_per_1000_images": round(per_image * 1000 / 2 ** 20, 1),
                    "preload_MB_per_1000_images_at_100_boxes": round(1000 * 100 * (2048 + 4) * 4 / 2 ** 20, 1),
                })
        if not args.no_packed:
            measure_packed(root, vocab, args, workers, result)
        result["generate_s"] = round(generate_s, 2)
        result["cpus"] = os.cpu_count()
        result["runtime_configured"] = not args.defaults
    print(json.dumps(result))


if __name__ == "__main__":
    main()
