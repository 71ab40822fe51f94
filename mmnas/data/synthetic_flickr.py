"""A small synthetic Flickr30K ("a red cup and a blue dog"), written in exactly the reference
layout (data/flickr.py), that a tiny matching model learns on a CPU in minutes (spec 5.2/5.3).

The world: object types are (colour, shape) pairs out of n_types colours x n_types shapes.
Each image holds n_objects objects of distinct types at random boxes (W, H in 300..600, sides
15..35 % of the canvas); its region feature is
    (one-hot colour ++ one-hot shape) @ M + N(0, 0.3^2) noise,   M a fixed random [2*n_types, feat_size]
so the features are opaque, like detector features, and carry no position. Each image gets 5
captions, each naming 2 of its objects through one of 5 templates (with capitals and
punctuation for the tokeniser to remove). Some captions also fit other images, so the ceiling
is below 100. Chance: i2t R@K = 1 - C(5n-5, K)/C(5n, K), t2i R@K = K/n (metrics/retrieval.py).

The easier setting that learns (spec 5.3) is the default: n_objects=3, n_types=4. The harder
n_objects=4, n_types=6 did not learn in 190 updates in the spec's prototype.

Files (Flickr id of image g = 1000000 + g, Karpathy imgid = g, over train, dev, test):
    itm/flickr_bua-r101-fix36/<flickr id>.jpg.npz   x [feat_size, n_objects], bbox, image_h, image_w
    itm/f30k_precomp/{train,dev,test}_caps.txt
    itm/f30k_precomp/train_ids.txt (one line per image), {dev,test}_ids.txt (one line per caption)
    itm/dataset_flickr30k.json                       images[*]: filename, imgid, split, sentences
Everything is a pure function of the seed.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Tuple

import numpy as np

from mmnas.data.flickr import CAPTIONS_PER_IMAGE, FEATURE_DIR, ITM_DIR, KARPATHY_JSON, PRECOMP_DIR
from mmnas.data.synthetic import save_npz_deterministic
from mmnas.progress import progress_bar

MARKER_FILE = "README_SYNTHETIC.txt"
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
SHAPES = ("cup", "dog", "ball", "car", "hat", "book", "chair", "tree")
TEMPLATES = (
    "a {c1} {s1} and a {c2} {s2}",
    "A {c1} {s1} next to a {c2} {s2}.",
    "there is a {c1} {s1}, and also a {c2} {s2}!",
    "the {c1}-{s1} with the {c2} {s2}",
    "Two things: a {c1} {s1} (and a {c2} {s2}).",
)
FLICKR_ID_BASE = 1000000
FEATURE_NOISE = 0.3
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}


def feature_file_name(global_index: int) -> str:
    return f"{FLICKR_ID_BASE + global_index}.jpg.npz"


def _image_rng(seed: int, global_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, global_index])


def sample_image(seed: int, global_index: int, n_objects: int, n_types: int
                 ) -> Tuple[np.ndarray, np.ndarray, int, int, List[str]]:
    """(colour ids [n_objects], shape ids [n_objects], width, height, 5 captions) of one image."""
    rng = _image_rng(seed, global_index)
    types = rng.choice(n_types * n_types, size=n_objects, replace=False)  # distinct (colour, shape)
    colours, shapes = types // n_types, types % n_types
    width, height = (int(v) for v in rng.integers(300, 601, size=2))
    captions = []
    for _ in range(CAPTIONS_PER_IMAGE):
        a, b = rng.choice(n_objects, size=2, replace=False)
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        captions.append(template.format(c1=COLOURS[colours[a]], s1=SHAPES[shapes[a]],
                                        c2=COLOURS[colours[b]], s2=SHAPES[shapes[b]]))
    return colours, shapes, width, height, captions


def region_arrays(seed: int, global_index: int, colours: np.ndarray, shapes: np.ndarray, width: int,
                  height: int, embedding: np.ndarray) -> Dict[str, np.ndarray]:
    """The npz arrays of one image: x [feat_size, n] (channels first), bbox [n, 4] xyxy, image_h, image_w."""
    rng = np.random.default_rng([seed, 8, global_index])
    n_types = embedding.shape[0] // 2
    n = len(colours)
    onehot = np.zeros((n, 2 * n_types), dtype=np.float32)
    onehot[np.arange(n), colours] = 1.0
    onehot[np.arange(n), n_types + shapes] = 1.0
    feats = onehot @ embedding + FEATURE_NOISE * rng.standard_normal((n, embedding.shape[1]), dtype=np.float32)
    sides = rng.uniform(0.15, 0.35, size=(n, 2)) * np.array([width, height])
    x1 = rng.uniform(0, 1, n) * (width - 1 - sides[:, 0])
    y1 = rng.uniform(0, 1, n) * (height - 1 - sides[:, 1])
    bbox = np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1).astype(np.float32)
    return {"x": np.ascontiguousarray(feats.T, dtype=np.float32), "bbox": bbox,
            "image_h": np.int64(height), "image_w": np.int64(width)}


def make_synthetic_flickr(out_root: str, n_train_images: int = 1000, n_dev_images: int = 50,
                          n_test_images: int = 50, n_objects: int = 3, n_types: int = 4, feat_size: int = 2048,
                          seed: int = 0, overwrite: bool = False, progress: bool = False) -> dict:
    """Write the synthetic world under `<out_root>/itm/` and return a summary dict. Refuses
    (FileExistsError) to replace an itm/ folder that is not marked synthetic unless `overwrite`."""
    if not 2 <= n_types <= len(COLOURS):
        raise ValueError(f"n_types must be in 2..{len(COLOURS)}, got {n_types}")
    if not 2 <= n_objects <= n_types * n_types:
        raise ValueError(f"n_objects must be in 2..{n_types * n_types} (distinct types per image), got {n_objects}")
    sizes = {"train": n_train_images, "dev": n_dev_images, "test": n_test_images}
    for split, n in sizes.items():
        if n < 2:
            raise ValueError(f"{split} needs at least 2 images, got {n}")
    if feat_size < 2 * n_types:
        raise ValueError(f"feat_size must be at least 2 * n_types = {2 * n_types}, got {feat_size}")
    start = time.time()
    itm_root = os.path.join(out_root, ITM_DIR)
    feat_dir = os.path.join(itm_root, FEATURE_DIR)
    precomp_dir = os.path.join(itm_root, PRECOMP_DIR)
    if os.path.isdir(itm_root) and os.listdir(itm_root) and not os.path.exists(os.path.join(itm_root, MARKER_FILE)) \
            and not overwrite:
        raise FileExistsError(f"{itm_root} already holds files and is not marked synthetic (no {MARKER_FILE}); "
                              f"refusing to overwrite it. Pass --overwrite to replace it, or choose another --out.")
    os.makedirs(feat_dir, exist_ok=True)
    os.makedirs(precomp_dir, exist_ok=True)
    for name in os.listdir(feat_dir):  # stale files of a bigger earlier run
        if name.endswith(".npz") or name.endswith(".npz.part"):
            os.remove(os.path.join(feat_dir, name))
    with open(os.path.join(itm_root, MARKER_FILE), "w", encoding="utf-8") as f:
        f.write(f"SYNTHETIC DATA - this is not Flickr30K.\nGenerated by tools/make_synthetic_flickr.py "
                f"(mmnas/data/synthetic_flickr.py).\nseed {seed}, images train {n_train_images} / dev "
                f"{n_dev_images} / test {n_test_images}, n_objects {n_objects}, n_types {n_types}, "
                f"feat_size {feat_size}\n")

    embedding = np.random.default_rng([seed, 9]).standard_normal((2 * n_types, feat_size)).astype(np.float32)
    karpathy_images = []
    global_index = 0
    total = sum(sizes.values())
    bar = progress_bar(total=total, desc="synthetic flickr", unit="img", disable=not progress)
    for split in ("train", "dev", "test"):
        captions, ids = [], []
        for _ in range(sizes[split]):
            colours, shapes, width, height, image_captions = sample_image(seed, global_index, n_objects, n_types)
            save_npz_deterministic(os.path.join(feat_dir, feature_file_name(global_index)),
                                   region_arrays(seed, global_index, colours, shapes, width, height, embedding))
            captions.extend(image_captions)
            # the reference's asymmetry: train ids one line per image, dev/test one per caption
            ids.extend([str(global_index)] * (1 if split == "train" else CAPTIONS_PER_IMAGE))
            karpathy_images.append({
                "filename": f"{FLICKR_ID_BASE + global_index}.jpg", "imgid": global_index, "split": split,
                "sentences": [{"raw": c, "imgid": global_index} for c in image_captions]})
            global_index += 1
            bar.update(1)
        for name, lines in ((f"{split}_caps.txt", captions), (f"{split}_ids.txt", ids)):
            with open(os.path.join(precomp_dir, name), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    bar.close()
    with open(os.path.join(itm_root, KARPATHY_JSON), "w", encoding="utf-8") as f:
        json.dump({"images": karpathy_images, "dataset": "flickr30k-synthetic"}, f)
    return {"itm_root": itm_root, "seed": seed, "images": sizes, "captions": {k: 5 * v for k, v in sizes.items()},
            "n_objects": n_objects, "n_types": n_types, "feat_size": feat_size,
            "seconds": time.time() - start}
