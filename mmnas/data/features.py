"""VQA-v2 files on disk: where they live, and reading them with loud, specific errors.

Layout under `<data_root>/vqa/` (see docs/data.md, section "VQA-v2"):

    raw/v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json
    raw/v2_mscoco_{train2014,val2014}_annotations.json
    raw/VG_questions.json, raw/VG_annotations.json
    feats/{train2014,val2014,test2015}/COCO_<split>_<12-digit image id>.jpg.npz

A bad file stops the run with a message that names the file, says what is wrong with it and
how to fix it: raw files and feature-file headers before training starts, a feature file's
contents when a batch first reads it (or all of them up front with --CHECK_FEATS=True).
Every error here is a `DataError`.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from mmnas.config import MAX_REGIONS, MIN_REGIONS  # the accepted box range, defined once

FEAT_DIM = 2048
README_DATA = 'docs/data.md, section "VQA-v2"'  # where the user reads about these files

# Paths relative to <data_root>/vqa, per split part.
QUESTION_FILES = {
    "train": "raw/v2_OpenEnded_mscoco_train2014_questions.json",
    "val": "raw/v2_OpenEnded_mscoco_val2014_questions.json",
    "test": "raw/v2_OpenEnded_mscoco_test2015_questions.json",
    "vg": "raw/VG_questions.json",
}
ANNOTATION_FILES = {
    "train": "raw/v2_mscoco_train2014_annotations.json",
    "val": "raw/v2_mscoco_val2014_annotations.json",
    "vg": "raw/VG_annotations.json",
}
# Visual Genome questions are asked about COCO train/val images.
FEATURE_DIRS = {
    "train": ("feats/train2014",),
    "val": ("feats/val2014",),
    "test": ("feats/test2015",),
    "vg": ("feats/train2014", "feats/val2014"),
}


class DataError(ValueError):
    """A data file that is missing or unusable; the message names it, the problem and the fix."""


def vqa_path(data_root: str, relative: str) -> str:
    return os.path.join(data_root, "vqa", relative)


def check_raw_files(data_root: str, needed: Iterable[str]) -> List[str]:
    """Return absolute paths of `needed` (relative to <data_root>/vqa); raise one DataError
    listing every missing one, so the user fixes them all in one go."""
    paths = [vqa_path(data_root, rel) for rel in needed]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        listing = "\n  ".join(missing)
        raise DataError(
            f"{len(missing)} VQA-v2 file(s)/folder(s) missing under {os.path.join(data_root, 'vqa')}:\n"
            f"  {listing}\n"
            f"See {README_DATA} for where to download them and how to lay them out "
            f"(or point data.data_root / --DATA_ROOT at the folder holding vqa/).")
    return [os.path.abspath(p) for p in paths]


QUESTION_FIELDS = ("image_id", "question", "question_id")
ANNOTATION_FIELDS = ("question_id", "image_id", "multiple_choice_answer", "answers")


def read_json(path: str, key: str, fields: Sequence[str] = ()):
    """Load a VQA JSON file and return its top-level list `key` ("questions"/"annotations"),
    checking every entry has `fields` (default: those of `key`)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos}). "
            f"The file is probably truncated or corrupted; download it again ({README_DATA})."
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); download it again ({README_DATA}).") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check it exists and is readable.") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} has no top-level list {key!r} (found {found}); is it the right "
                        f"file? See {README_DATA}.")
    entries = data[key]
    fields = fields or {"questions": QUESTION_FIELDS, "annotations": ANNOTATION_FIELDS}.get(key, ())
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(f in entry for f in fields):
            have = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(f"{path}: {key}[{i}] lacks some of the fields {list(fields)} (has {have}); "
                            f"the file is not a VQA-v2 {key} file or is damaged. See {README_DATA}.")
        for name in fields:
            problem = _field_problem(name, entry[name])
            if problem:
                qid = (f" (question_id {entry['question_id']!r})"
                       if name != "question_id" and "question_id" in entry else "")
                raise DataError(f"{path}: {key}[{i}]{qid} has {name} = {_short(entry[name])}, {problem}; "
                                f"fix or remove that entry, or download the file again ({README_DATA}).")
    return entries


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_problem(name: str, value) -> Optional[str]:
    """Why `value` cannot be the VQA-v2 field `name` (None if it can): the types the dataset,
    the vocabularies and the metric rely on."""
    if name in ("image_id", "question_id"):
        return None if _is_int(value) else "expected an integer"
    if name in ("question", "multiple_choice_answer"):
        return None if isinstance(value, str) else "expected a string"
    if name == "answers":
        if not isinstance(value, list):
            return "expected a list of {\"answer\": text} entries"
        bad = [j for j, a in enumerate(value) if not (isinstance(a, dict) and isinstance(a.get("answer"), str))]
        return f"answers[{bad[0]}] is not an {{\"answer\": text}} entry" if bad else None
    return None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------- features

def image_id_from_name(name: str) -> int:
    """'COCO_train2014_000000000009.jpg.npz' -> 9: the integer after the last '_', before the first '.'."""
    return int(name.split(".", 1)[0].rsplit("_", 1)[-1])


_index_cache: Dict[Tuple[str, int], Dict[int, str]] = {}


def feature_index(folder: str) -> Dict[int, str]:
    """Map image id -> .npz path for one feature folder, scanning it once (cached per mtime)."""
    folder = os.path.abspath(folder)
    try:
        key = (folder, os.stat(folder).st_mtime_ns)
    except OSError:
        raise DataError(f"feature folder {folder} does not exist; see {README_DATA}.") from None
    if key in _index_cache:
        return _index_cache[key]
    index: Dict[int, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".npz"):
                continue
            try:
                image_id = image_id_from_name(entry.name)
            except ValueError:
                raise DataError(f"{entry.path}: cannot read an image id from the file name; expected "
                                f"COCO_<split>_<12-digit id>.jpg.npz. Rename or remove it.") from None
            if image_id in index:
                raise DataError(f"{folder} holds two feature files for image {image_id}: "
                                f"{os.path.basename(index[image_id])} and {entry.name}; remove one.")
            index[image_id] = entry.path
    _index_cache[key] = index
    return index


class BadFeatureFile(DataError):
    """A feature file training cannot use; `kind` and `detail` feed check_feats' report."""

    def __init__(self, path: str, kind: str, detail: str, fix: Optional[str] = None):
        fix = fix or f"re-extract or re-download this file (bottom-up-attention .npz, see {README_DATA})"
        super().__init__(f"feature file {path}: {detail}. Fix: {fix}.")
        self.kind, self.detail = kind, detail


def check_box_count(path: str, n: int, max_regions: int = MAX_REGIONS) -> None:
    """Refuse a region count outside MIN_REGIONS..max_regions (BadFeatureFile, kind bad_shape)."""
    if n < MIN_REGIONS:
        raise BadFeatureFile(path, "bad_shape", f"'x' holds {n} regions, fewer than {MIN_REGIONS}")
    if n > max_regions:
        raise BadFeatureFile(path, "bad_shape", f"'x' holds {n} regions, more than model.max_regions={max_regions}",
                             fix=f"re-extract it with at most {max_regions} boxes, or raise model.max_regions "
                                 f"in the config (the model takes any n; memory grows with n squared)")


def feature_width_error(path: str, width: int, feat_size: int, shape=None) -> BadFeatureFile:
    """The error for features `width` wide where the model reads model.feat_size (kind bad_shape)."""
    shown = f" ('x' has shape {list(shape)})" if shape is not None else ""
    return BadFeatureFile(path, "bad_shape", f"its features are {width} wide{shown} but model.feat_size is {feat_size}",
                          fix=f"set model.feat_size: {width} in the config if these are the features to "
                              f"train on, or use {feat_size}-wide features")


def _other_width(shape, regions_first: bool, feat_size: int) -> Optional[int]:
    """The width of an 'x' of the right layout but another width than feat_size, else None.
    The layout fits when the features axis is the longer one (n <= 100 regions, features are
    hundreds wide) and the regions axis is not feat_size (that is the other layout)."""
    if len(shape) != 2:
        return None
    axis = 0 if regions_first else 1  # the regions axis
    width, n = shape[1 - axis], shape[axis]
    return int(width) if width != feat_size and n != feat_size and width > n else None


def _region_count(path: str, shape, regions_first: bool, feat_size: int = FEAT_DIM) -> int:
    """n from the shape of 'x': [feat_size, n] (VQA-v2 release, channels first) or, with
    regions_first, [n, feat_size] (GQA release); BadFeatureFile for any other shape, naming
    model.feat_size when only the width differs."""
    axis = 0 if regions_first else 1
    if len(shape) == 2 and shape[1 - axis] == feat_size:
        return int(shape[axis])
    width = _other_width(shape, regions_first, feat_size)
    if width is not None:
        raise feature_width_error(path, width, feat_size, shape)
    expected = f"[n, {feat_size}] (regions first, GQA)" if regions_first else f"[{feat_size}, n] (channels first)"
    flipped = len(shape) == 2 and shape[axis] == feat_size
    hint = f"; the file looks {'channels first (VQA-v2 layout)' if regions_first else 'regions first (GQA layout)'}" \
        if flipped else ""
    raise BadFeatureFile(path, "bad_shape", f"'x' has shape {list(shape)}, expected {expected}{hint}")


def validate_features(path: str, arrays, max_regions: int = MAX_REGIONS,
                      regions_first: bool = False, feat_size: int = FEAT_DIM) -> Tuple[np.ndarray, np.ndarray]:
    """What training accepts, one check at a time: `arrays` (the .npz's mapping) ->
    (region_feats float32 [n, feat_size], boxes float32 [n, 4]), or BadFeatureFile for the first
    problem. tools/check_feats.py reports exactly these problems as errors."""
    for key in ("x", "bbox"):
        if key not in arrays:
            raise BadFeatureFile(path, "missing_keys", f"key {key!r} is missing (keys present: {sorted(arrays)})")
    x, bbox = arrays["x"], arrays["bbox"]
    n = _region_count(path, x.shape, regions_first, feat_size)
    check_box_count(path, n, max_regions)
    if bbox.ndim != 2 or bbox.shape != (n, 4):
        raise BadFeatureFile(path, "bad_shape", f"'bbox' has shape {list(bbox.shape)} but 'x' has n={n} regions; "
                                                f"expected [{n}, 4]")
    num_bbox = np.asarray(arrays.get("num_bbox", n)).reshape(-1)
    if num_bbox.size != 1 or not np.issubdtype(num_bbox.dtype, np.number) or num_bbox[0] != n:
        value = num_bbox[0].item() if num_bbox.size == 1 else num_bbox.tolist()
        raise BadFeatureFile(path, "bad_shape", f"'num_bbox' = {_short(value)} but 'x' has n={n} regions")
    for name, arr in (("x", x), ("bbox", bbox)):
        if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
            raise BadFeatureFile(path, "bad_shape", f"'{name}' has dtype {arr.dtype}, expected real numbers")
    region_feats = np.ascontiguousarray(x if regions_first else x.T, dtype=np.float32)  # [n, feat_size]
    boxes = np.ascontiguousarray(bbox, dtype=np.float32)  # [n, 4] x1, y1, x2, y2 in pixels
    for name, arr in (("x", region_feats), ("bbox", boxes)):
        if not np.isfinite(arr).all():
            nans, infs = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            raise BadFeatureFile(path, "nan_inf", f"'{name}' holds {nans} NaN and {infs} inf value(s)")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        row = int(np.flatnonzero(inverted)[0])
        first = [round(float(v), 1) for v in boxes[row]]
        raise BadFeatureFile(path, "bad_boxes", f"{int(inverted.sum())} box(es) have x2 < x1 or y2 < y1 "
                                                f"(first: row {row} = {first}, expected x1, y1, x2, y2)")
    return region_feats, boxes


def _unreadable(path: str, e: Exception) -> BadFeatureFile:
    return BadFeatureFile(path, "unreadable", f"cannot be read, it is truncated or not an .npz "
                                              f"({type(e).__name__}: {e})")


def _not_permitted(path: str) -> BadFeatureFile:
    return BadFeatureFile(path, "unreadable", "permission denied",
                          fix="make it readable by this user (e.g. chmod a+r), or run as its owner")


def load_npz(path: str, max_regions: int = MAX_REGIONS, regions_first: bool = False,
             feat_size: int = FEAT_DIM) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate one feature file -> (region_feats float32 [n, feat_size], boxes float32 [n, 4]);
    regions_first: the file's x is [n, feat_size] (GQA) instead of [feat_size, n] (VQA-v2)."""
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in ("x", "bbox", "num_bbox") if key in npz.files}
            missing = [key for key in ("x", "bbox") if key not in arrays]
            if missing:  # name every key the file does have
                arrays.update((key, None) for key in npz.files if key not in arrays)
    except FileNotFoundError:
        raise DataError(f"feature file {path} does not exist (was it moved or deleted after the "
                        f"dataset was built?).") from None
    except PermissionError:
        raise _not_permitted(path) from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, ...
        raise _unreadable(path, e) from None
    return validate_features(path, arrays, max_regions, regions_first, feat_size)


def _x_shape(path: str) -> Optional[tuple]:
    """The shape of 'x' from its .npy header only (no feature data read); None for the rare .npy
    format 3.0; BadFeatureFile when the file cannot be opened or has no 'x'."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(f)[0]
            if version == (2, 0):
                return np.lib.format.read_array_header_2_0(f)[0]
            return None
    except KeyError:
        raise BadFeatureFile(path, "missing_keys", "key 'x' is missing") from None
    except PermissionError:
        raise _not_permitted(path) from None
    except Exception as e:
        raise _unreadable(path, e) from None


def read_box_count(path: str, max_regions: int = MAX_REGIONS, regions_first: bool = False,
                   feat_size: int = FEAT_DIM) -> int:
    """Number of regions n in a feature file, from the header of 'x' only (no feature data read);
    BadFeatureFile when n is outside MIN_REGIONS..max_regions or 'x' is not feat_size wide."""
    shape = _x_shape(path)
    if shape is None:  # rare .npy format 3.0: read the whole file instead
        return len(load_npz(path, max_regions, regions_first, feat_size)[0])
    n = _region_count(path, shape, regions_first, feat_size)
    check_box_count(path, n, max_regions)
    return n


def check_feature_width(path: str, regions_first: bool = False, feat_size: int = FEAT_DIM) -> None:
    """BadFeatureFile naming model.feat_size when the header of the file's 'x' shows features of
    another width; any other problem of the file is left to the check that reads it (load_npz)."""
    try:
        shape = _x_shape(path)
    except BadFeatureFile:
        return
    width = _other_width(shape, regions_first, feat_size) if shape is not None else None
    if width is not None:
        raise feature_width_error(path, width, feat_size, shape)
