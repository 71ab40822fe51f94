"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions as a paddle Dataset, in the layout of the
MMnas reference (spec grounding_matching.md, section 1.1):

    <data_root>/vgd/bua-r101-fix100/*.npz        # one folder for the three datasets: x [2048, n]
                                                 # (channels first), bbox [n, 4] xyxy pixels,
                                                 # image_h, image_w; image id = the file name's
                                                 # digits after the last '_' (COCO_train2014_000000581857.jpg.npz)
    <data_root>/vgd/refcoco/{train,val,testA,testB}.json
    <data_root>/vgd/refcoco+/{train,val,testA,testB}.json
    <data_root>/vgd/refcocog/{train,val,test}.json

A split file is a JSON list with one entry per referring sentence: tokens (the refer toolkit's
word list, used as is), image_id, bbox [x, y, w, h] of the referred object, height and width
of the image (and split, file_name, name, which are not needed). Any '+'-join of a dataset's
splits can be opened (train+val for training), and every evaluation split, testB and RefCOCOg's
test included (the reference hard-codes testA).

Vocabulary: the tokens of every split of the dataset, in file order (train, val, then the test
splits), PAD=0, UNK=1, CLS=2, as the reference builds it (so no word is ever unknown).
An expression becomes model.max_token ids of which the last is always PAD: the reference's 14
words + 1 PAD = 15 LSTM steps with max_token: 15 (configs/vgd/). The trailing PAD changes no
number (the LSTM runs forward, padded positions are masked), it only keeps the shape.

Labels per expression (`make_labels`): IoU of every proposal with the GT box; if the best reaches
0.5 the expression is trained (scores_mask 1): score target = the IoUs of the proposals >= 0.5,
normalised to sum 1, and bbox_mask = those proposals; delta targets = normalised deltas from every
proposal to the GT. Evaluation clips boxes to the image size of the split file (height, width):
the size of the COCO image, as the npz's image_h / image_w are (--CHECK_FEATS=True compares them).

Items are dicts (see `RefCOCODataset.__getitem__`), batched by `collate_grounding`.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmnas.config import MAX_REGIONS
from mmnas.data.features import FEAT_DIM, DataError, feature_index
from mmnas.data.regions import RegionDataset
from mmnas.data.vocab import CLS, PAD, UNK, Vocab
from mmnas.metrics import grounding as grounding_metric
from mmnas.metrics.boxes import POSITIVE_IOU, box_iou, encode_deltas, normalize_deltas, xywh_to_xyxy

README_VGD = 'docs/grounding.md, section "Data layout"'
FEATURE_DIR = "vgd/bua-r101-fix100"
# dataset -> its split files, in the order the vocabulary reads them
SPLIT_FILES = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
REF_FIELDS = ("tokens", "image_id", "bbox", "height", "width")


def refs_path(data_root: str, dataset: str, part: str) -> str:
    return os.path.join(data_root, "vgd", dataset, f"{part}.json")


def check_dataset(dataset: str) -> None:
    if dataset not in SPLIT_FILES:
        raise DataError(f"unknown grounding dataset {dataset!r}; use one of {', '.join(SPLIT_FILES)}")


def split_parts(dataset: str, split: str) -> List[str]:
    """'train+val' -> ['train', 'val']; DataError naming the choices for an unknown dataset or split."""
    check_dataset(dataset)
    parts = split.split("+")
    if not all(p in SPLIT_FILES[dataset] for p in parts) or len(set(parts)) != len(parts):
        raise DataError(f"unknown {dataset} split {split!r}; use one of {', '.join(SPLIT_FILES[dataset])} "
                        f"or a '+'-join of them (e.g. train+val)")
    return parts


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _ref_problem(entry) -> Optional[str]:
    """Why `entry` cannot be a referring expression (None if it can)."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    missing = [f for f in REF_FIELDS if f not in entry]
    if missing:
        return f"lacks the field(s) {missing} (has {sorted(entry)})"
    tokens = entry["tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        return f"has tokens = {str(tokens)[:60]}, expected a non-empty list of words"
    if not isinstance(entry["image_id"], int) or isinstance(entry["image_id"], bool):
        return f"has image_id = {entry['image_id']!r}, expected an integer"
    bbox = entry["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)) or min(bbox[2:]) < 0:
        return f"has bbox = {str(bbox)[:60]}, expected [x, y, w, h] with w, h >= 0"
    for name in ("height", "width"):
        v = entry[name]
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            return f"has {name} = {v!r}, expected a positive integer (the image size in pixels)"
    return None


def read_refs(path: str) -> List[dict]:
    """One split file -> its list of expressions, or a DataError naming the file, the entry and the fix."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            refs = json.load(f)
    except FileNotFoundError:
        raise DataError(f"grounding split file {path} does not exist; see {README_VGD} for the layout "
                        f"(tools/make_synthetic_refcoco.py writes a small synthetic one).") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos}). "
                        f"The file is probably truncated; write it again (see {README_VGD}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; check it exists, is readable and is UTF-8 JSON.") from None
    if not isinstance(refs, list):
        raise DataError(f"{path} holds a JSON {type(refs).__name__}, expected a list with one entry per referring "
                        f"sentence ({', '.join(REF_FIELDS)}); see {README_VGD}.")
    for i, entry in enumerate(refs):
        problem = _ref_problem(entry)
        if problem:
            raise DataError(f"{path}: entry {i} {problem}; fix or remove that entry, or write the file again "
                            f"(see {README_VGD}).")
    return refs


def build_refcoco_vocab(data_root: str, dataset: str, max_token: int) -> Vocab:
    """Token ids over the tokens of every split file of `dataset` (the ones present), in file order;
    no answers. max_token: ids per expression (the last always PAD)."""
    check_dataset(dataset)
    token_to_ix = {PAD: 0, UNK: 1, CLS: 2}
    sources = []
    for part in SPLIT_FILES[dataset]:
        path = refs_path(data_root, dataset, part)
        if not os.path.exists(path):
            continue
        sources.append(os.path.abspath(path))
        for entry in read_refs(path):
            for word in entry["tokens"]:
                if word not in token_to_ix:
                    token_to_ix[word] = len(token_to_ix)
    if not sources:
        raise DataError(f"no split file of {dataset} under {os.path.join(data_root, 'vgd', dataset)} "
                        f"(expected {', '.join(p + '.json' for p in SPLIT_FILES[dataset])}); see {README_VGD}.")
    return Vocab(token_to_ix=token_to_ix, ans_to_ix={}, ix_to_ans={}, sources=sources, max_token=max_token)


def encode_tokens(tokens: Sequence[str], token_to_ix: Dict[str, int], max_token: int) -> np.ndarray:
    """int64 [max_token]: the first max_token - 1 words' ids (UNK for unknown words), then PAD."""
    ids = np.zeros(max_token, dtype=np.int64)
    unk = token_to_ix[UNK]
    for pos, word in enumerate(list(tokens)[:max_token - 1]):
        ids[pos] = token_to_ix.get(word, unk)
    return ids


def make_labels(proposals, gt_box) -> Tuple[np.ndarray, np.float32, np.ndarray, np.ndarray]:
    """Training labels of one expression against its image's proposals [n, 4] (xyxy pixels) and
    its GT box [4] (xyxy) -> (score_target [n], scores_mask (0 or 1), delta_targets [n, 4]
    (normalised), bbox_mask [n]), float32."""
    proposals = np.asarray(proposals, dtype=np.float64)
    ious = box_iou(proposals, np.asarray(gt_box, dtype=np.float64)[None])[:, 0]  # [n]
    positive = ious >= POSITIVE_IOU
    score_target = np.zeros(len(proposals), dtype=np.float64)
    scores_mask = np.float32(0.0)
    if positive.any():
        scores_mask = np.float32(1.0)
        score_target = np.where(positive, ious, 0.0)
        score_target = score_target / (score_target.sum() + 1e-8)  # the reference's normaliser
    delta_targets = normalize_deltas(encode_deltas(proposals, gt_box))
    return (score_target.astype(np.float32), scores_mask, delta_targets.astype(np.float32),
            positive.astype(np.float32))


class RefCOCODataset(RegionDataset):
    """Expressions in split-file order over the split's parts (e.g. train then val)."""

    regions_first = False  # x [2048, n], as the reference's npz files
    readme_section = README_VGD
    result_folder_test = "result_test"

    def __init__(self, data_root: str, dataset: str, split: str, vocab: Vocab, *, preload: bool = False,
                 preload_workers: int = 8, drop_missing_images: bool = False, progress: bool = True,
                 packed_feats: Optional[str] = None, max_regions: int = MAX_REGIONS, check_feats: bool = False,
                 feat_size: int = FEAT_DIM):
        super().__init__()
        self.data_root, self.dataset, self.vocab = data_root, dataset, vocab
        parts = split_parts(dataset, split)
        feat_dir = os.path.join(data_root, FEATURE_DIR)
        paths = [refs_path(data_root, dataset, p) for p in parts] + [feat_dir]
        absent = [p for p in paths if not os.path.exists(p)]
        if absent:
            raise DataError(f"{len(absent)} grounding file(s)/folder(s) missing:\n  " + "\n  ".join(absent) +
                            f"\nSee {README_VGD} for the layout (or point --DATA_ROOT at the folder holding vgd/; "
                            f"tools/make_synthetic_refcoco.py writes a small synthetic one).")
        index = feature_index(feat_dir)  # image id -> .npz path
        self.has_answers = True  # every split of RefCOCO* has its GT boxes
        self.question_ids: List[str] = []  # expression ids "<part>/<position in the split file>"
        self.refs: List[dict] = []
        self.gt_boxes: Dict[str, np.ndarray] = {}  # expression id -> GT xyxy (the metric reads it)
        image_paths, missing = [], []
        for part in parts:
            for i, entry in enumerate(read_refs(refs_path(data_root, dataset, part))):
                expression_id = f"{part}/{i}"
                path = index.get(entry["image_id"])
                if path is None:
                    missing.append((expression_id, entry["image_id"]))
                    continue
                self.question_ids.append(expression_id)
                self.refs.append(entry)
                self.gt_boxes[expression_id] = xywh_to_xyxy(entry["bbox"])
                image_paths.append(path)
        if missing:
            what = (f"{len(missing)} of {len(missing) + len(self.refs)} expressions of {dataset} split {split!r} "
                    f"have no feature file in {feat_dir}; first: " +
                    ", ".join(f"expression {eid} (image {iid})" for eid, iid in missing[:5]))
            if not drop_missing_images:
                raise DataError(f"{what}. Fix: add the missing .npz files (see {README_VGD}), or drop these "
                                f"expressions with --DROP_MISSING=True.")
            warnings.warn(f"{what}. Dropping them (drop_missing_images=True).", stacklevel=2)
        if not self.refs:
            raise DataError(f"{dataset} split {split!r} under {data_root} has no expressions left.")
        self._question_texts = [" ".join(entry["tokens"]) for entry in self.refs]
        self._setup_images(image_paths, split=split, progress=progress, max_regions=max_regions,
                           packed_feats=packed_feats, check_feats=check_feats, preload=preload,
                           preload_workers=preload_workers, feat_size=feat_size)
        if check_feats:
            self.check_image_sizes()

    def encoded_question(self, i: int) -> np.ndarray:
        """int64 [vocab.max_token]: expression i's word ids, the last one always PAD."""
        return encode_tokens(self.refs[i]["tokens"], self.vocab.token_to_ix, self.vocab.max_token)

    def image_size(self, i: int) -> np.ndarray:
        """float32 [2]: (height, width) of expression i's image, from its split file."""
        return np.array([self.refs[i]["height"], self.refs[i]["width"]], dtype=np.float32)

    def check_image_sizes(self) -> None:
        """DataError when a feature file's image_h / image_w differ from the split files' height /
        width (boxes would be clipped to the wrong image); files without those keys and images in
        packed stores are not compared."""
        size_of: Dict[int, Tuple[int, int, str]] = {}
        for i, entry in enumerate(self.refs):
            size_of.setdefault(int(self._item_image[i]), (entry["height"], entry["width"], self.question_ids[i]))
        bad = []
        for image, (height, width, eid) in sorted(size_of.items()):
            if self._image_store[image] >= 0:
                continue
            path = self._image_paths[image]
            with np.load(path) as npz:
                if "image_h" not in npz.files or "image_w" not in npz.files:
                    continue
                h, w = int(npz["image_h"]), int(npz["image_w"])
            if (h, w) != (height, width):
                bad.append(f"{path}: image_h, image_w = {h}, {w} but expression {eid} says height, width = "
                           f"{height}, {width}")
        if bad:
            raise DataError(f"{len(bad)} feature file(s) disagree with the {self.dataset} split files on the image "
                            f"size:\n  " + "\n  ".join(bad[:5]) + f"\nFix: the features and the split files "
                            f"must describe the same COCO images (see {README_VGD}).")

    def __getitem__(self, i) -> dict:
        i = int(i)
        region_feats, boxes = self.region_arrays(i)  # [n, feat_size], [n, 4]
        gt_box = self.gt_boxes[self.question_ids[i]]
        score_target, scores_mask, delta_targets, bbox_mask = make_labels(boxes, gt_box)
        return {"region_feats": region_feats, "boxes": boxes, "token_ids": self.encoded_question(i),
                "score_target": score_target, "scores_mask": scores_mask, "delta_targets": delta_targets,
                "bbox_mask": bbox_mask, "gt_box": gt_box.astype(np.float32), "image_size": self.image_size(i),
                "index": np.int64(i)}

    # ---- results: boxes per expression and accuracy@0.5

    def result_entries(self, boxes, regions) -> List[dict]:
        """[{"expression_id", "box", "region"}] over every expression of the split, in order."""
        return grounding_metric.result_entries(self.question_ids, boxes, regions)

    def score(self, entries: List[dict]) -> dict:
        return grounding_metric.score(entries, self.gt_boxes)

    format_scores = staticmethod(grounding_metric.format_scores)


# per region, zero-padded to the batch's largest n by collate_grounding
_REGION_KEYS = ("region_feats", "boxes", "score_target", "delta_targets", "bbox_mask")


def collate_grounding(items: Sequence[dict]) -> dict:
    """Stack items into numpy arrays, zero-padding the per-region ones to this batch's largest n
    (zero feature rows are padding to the model, zero targets and masks train nothing):
    region_feats [B, N, F], boxes [B, N, 4], token_ids [B, T], score_target [B, N],
    scores_mask [B], delta_targets [B, N, 4], bbox_mask [B, N], gt_box [B, 4], image_size [B, 2],
    index [B]."""
    n_max = max(len(item["region_feats"]) for item in items)
    batch = {}
    for key in _REGION_KEYS:
        first = items[0][key]
        out = np.zeros((len(items), n_max) + first.shape[1:], dtype=np.float32)
        for b, item in enumerate(items):
            out[b, :len(item[key])] = item[key]
        batch[key] = out
    batch["token_ids"] = np.stack([item["token_ids"] for item in items]).astype(np.int64)
    for key in ("scores_mask", "gt_box", "image_size"):
        batch[key] = np.stack([np.asarray(item[key], dtype=np.float32) for item in items])
    batch["index"] = np.array([item["index"] for item in items], dtype=np.int64)
    return batch
