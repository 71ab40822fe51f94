"""A small synthetic RefCOCO ("find the red cup", spec grounding_matching.md 5.1), written in
exactly the reference layout (mmnas/data/refcoco.py), so the real loader, check_feats, packed
stores and every run mode work on it.

The world:
- objects are 5 colours x 5 shapes; an image is W x H with W, H in [300, 600] and holds
  `min_regions`..`max_regions` proposals (8 by default; fewer exercise the padding), sides 15-35 %
  of W / H, placed at random;
- a region's feature is one-hot(colour) + one-hot(shape) (10-d) times a fixed random 10 x F
  matrix, plus N(0, 0.3^2) noise: opaque like detector features, with no position in it;
- an expression names a region whose (colour, shape) is unique in its image, through one of 4
  templates ("the red cup", "red cup", "the cup that is red", "a red colored cup");
- its GT box is that proposal moved by a *shape-specific* systematic offset (dx, dy, dw, dh from
  a fixed table, magnitudes 0.1-0.15 in delta units) plus +-2 % noise, clipped to the image, and
  stored as [x, y, w, h]: the proposal's IoU with it is about 0.7, so the pick is a hit before
  regression and the regression head has something to learn that it can learn (the offset
  depends on what the region is).
Chance accuracy is the mean of 1 / regions over the expressions (1/8 with 8 regions).

Everything is a pure function of the seed (one generator per image; fixed zip timestamps), so
the same arguments give the same bytes.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np

from mmnas.data.refcoco import FEATURE_DIR, SPLIT_FILES, refs_path
from mmnas.data.synthetic import save_npz_deterministic
from mmnas.metrics.boxes import box_iou, clip_boxes, decode_deltas, xywh_to_xyxy
from mmnas.progress import progress_bar

COLOURS = ("red", "blue", "green", "yellow", "white")
SHAPES = ("cup", "ball", "box", "dog", "car")
TEMPLATES = ("the {c} {s}", "{c} {s}", "the {s} that is {c}", "a {c} colored {s}")
# GT = proposal moved by these deltas (dx, dy, dw, dh) for each shape, plus OFFSET_NOISE
SHAPE_OFFSETS = np.array([[0.10, -0.10, 0.12, -0.10],
                          [-0.10, 0.10, -0.10, 0.12],
                          [0.10, 0.10, 0.10, 0.10],
                          [-0.10, -0.10, 0.10, 0.15],
                          [0.12, -0.10, -0.10, -0.10]])
OFFSET_NOISE = 0.02
FEATURE_NOISE = 0.3
MARKER_FILE = "README_SYNTHETIC.txt"
# split -> first image id (ids never collide between splits)
FIRST_IMAGE_ID = {"train": 1_000_000, "val": 2_000_000, "testA": 3_000_000, "testB": 4_000_000, "test": 5_000_000}


def _world_matrix(seed: int, feat_size: int) -> np.ndarray:
    """The fixed 10 x feat_size projection of one-hot(colour) + one-hot(shape)."""
    return np.random.default_rng([seed, 7]).standard_normal((len(COLOURS) + len(SHAPES), feat_size)).astype(np.float32)


def make_image(rng: np.random.Generator, matrix: np.ndarray, min_regions: int, max_regions: int,
               expressions_per_image: int):
    """One image: (region_feats [n, F], boxes [n, 4] xyxy, height, width, expressions), each
    expression (tokens, target region, GT box [x, y, w, h], shape name)."""
    width, height = (int(v) for v in rng.integers(300, 601, size=2))
    n = int(rng.integers(min_regions, max_regions + 1))
    while True:
        colours, shapes = rng.integers(0, len(COLOURS), n), rng.integers(0, len(SHAPES), n)
        pairs = list(zip(colours.tolist(), shapes.tolist()))
        unique = [i for i, p in enumerate(pairs) if pairs.count(p) == 1]
        if unique:
            break
    sides = rng.uniform(0.15, 0.35, size=(n, 2)) * [width, height]  # [n, 2] w, h
    corner = rng.uniform(0, 1, size=(n, 2)) * ([width, height] - sides)
    boxes = np.round(np.concatenate([corner, corner + sides], axis=1), 1)  # [n, 4]
    onehot = np.zeros((n, len(COLOURS) + len(SHAPES)), dtype=np.float32)
    onehot[np.arange(n), colours] = 1
    onehot[np.arange(n), len(COLOURS) + shapes] = 1
    feats = onehot @ matrix + FEATURE_NOISE * rng.standard_normal((n, matrix.shape[1])).astype(np.float32)
    expressions = []
    for target in rng.permutation(unique)[:expressions_per_image].tolist():
        c, s = COLOURS[colours[target]], SHAPES[shapes[target]]
        tokens = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(c=c, s=s).split()
        deltas = SHAPE_OFFSETS[shapes[target]] + rng.uniform(-OFFSET_NOISE, OFFSET_NOISE, size=4)
        gt = clip_boxes(decode_deltas(boxes[target], deltas), height, width)  # xyxy
        xywh = [round(float(v), 2) for v in (gt[0], gt[1], gt[2] - gt[0], gt[3] - gt[1])]
        expressions.append((tokens, target, xywh, s))
    return feats.astype(np.float32), boxes.astype(np.float32), height, width, expressions


def make_synthetic_refcoco(out_root: str, dataset: str = "refcoco", n_train_images: int = 1000,
                           n_eval_images: int = 150, expressions_per_image: int = 2, seed: int = 0,
                           min_regions: int = 8, max_regions: int = 8, feat_size: int = 2048,
                           progress: bool = False) -> dict:
    """Write the world under `<out_root>/vgd/` (features + `<dataset>/<split>.json` for every split
    of the dataset: train with n_train_images, each evaluation split with n_eval_images) and return
    a summary (expressions per split, chance, raw IoU of the target proposals, seconds). Refuses
    to write into a `vgd/` folder that holds files but no synthetic marker."""
    if dataset not in SPLIT_FILES:
        raise ValueError(f"dataset must be one of {', '.join(SPLIT_FILES)}, got {dataset!r}")
    if not 1 <= min_regions <= max_regions <= 100:
        raise ValueError(f"need 1 <= min_regions <= max_regions <= 100, got {min_regions}..{max_regions}")
    if expressions_per_image < 1 or feat_size < 1 or n_train_images < 1 or n_eval_images < 1:
        raise ValueError("images, expressions per image and feat_size must be at least 1")
    start = time.time()
    vgd_root = os.path.join(out_root, "vgd")
    if os.path.isdir(vgd_root) and os.listdir(vgd_root) and not os.path.exists(os.path.join(vgd_root, MARKER_FILE)):
        raise FileExistsError(f"{vgd_root} holds files that are not a synthetic RefCOCO (no {MARKER_FILE}); "
                              f"refusing to write there. Choose another output folder.")
    feat_dir = os.path.join(out_root, FEATURE_DIR)
    os.makedirs(feat_dir, exist_ok=True)
    os.makedirs(os.path.join(vgd_root, dataset), exist_ok=True)
    with open(os.path.join(vgd_root, MARKER_FILE), "w", encoding="utf-8") as f:
        f.write("SYNTHETIC DATA - this is not RefCOCO.\nGenerated by mmnas (tools/make_synthetic_refcoco.py, "
                "mmnas/data/synthetic_refcoco.py) in the layout of the MMnas reference.\n"
                f"dataset {dataset}; seed {seed}; images train {n_train_images}, each evaluation split "
                f"{n_eval_images}; {expressions_per_image} expressions per image; regions "
                f"{min_regions}..{max_regions}; features {feat_size} wide\n")
    matrix = _world_matrix(seed, feat_size)
    plan = [(part, i) for part in SPLIT_FILES[dataset]
            for i in range(n_train_images if part == "train" else n_eval_images)]
    refs: Dict[str, List[dict]] = {part: [] for part in SPLIT_FILES[dataset]}
    chance: Dict[str, List[float]] = {part: [] for part in refs}
    raw_ious = []
    for part, i in progress_bar(plan, desc=f"synthetic {dataset}", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, list(FIRST_IMAGE_ID).index(part), i])
        feats, boxes, height, width, expressions = make_image(rng, matrix, min_regions, max_regions,
                                                              expressions_per_image)
        image_id = FIRST_IMAGE_ID[part] + i
        save_npz_deterministic(os.path.join(feat_dir, f"COCO_train2014_{image_id:012d}.jpg.npz"), {
            "x": np.ascontiguousarray(feats.T), "bbox": boxes,  # x [F, n]: channels first, as the reference
            "image_h": np.int64(height), "image_w": np.int64(width)})
        for tokens, target, xywh, shape in expressions:
            refs[part].append({"tokens": tokens, "file_name": f"COCO_train2014_{image_id:012d}_{target}.jpg",
                               "image_id": image_id, "split": part, "bbox": xywh, "name": shape,
                               "height": height, "width": width})
            chance[part].append(1.0 / len(boxes))
            raw_ious.append(box_iou(boxes[target], xywh_to_xyxy(xywh))[0, 0])
    for part, entries in refs.items():
        path = refs_path(out_root, dataset, part)
        with open(path + ".part", "w", encoding="utf-8") as f:
            json.dump(entries, f)
        os.replace(path + ".part", path)
    return {"vgd_root": os.path.abspath(vgd_root), "dataset": dataset, "seed": seed,
            "expressions": {part: len(entries) for part, entries in refs.items()},
            "chance": {part: 100.0 * float(np.mean(c)) for part, c in chance.items()},
            "raw_iou": float(np.mean(raw_ious)), "seconds": round(time.time() - start, 2)}
