"""Scan a folder of region-feature .npz files and report everything that would hurt training.

Why: a single truncated download, a NaN or an inverted box shows up hours into a run as a
crash or a silently poisoned loss. Reading every file once, up front, in parallel, is cheap.

Per file, the errors are exactly what training refuses (features.validate_features, the check
behind the data loader): unreadable/truncated files, missing `x`/`bbox`, `x` not [feat_size, n]
(model.feat_size, default 2048), n outside 1..max_regions (model.max_regions, default 100),
`bbox` not [n, 4], `num_bbox` != n,
NaN/inf, boxes with x2 < x1 or y2 < y1. Warnings only (training accepts these): missing
`image_h`/`image_w`/`num_bbox`, n outside the usual 10..max_regions, non-float32 `x`, all-zero
feature rows (the loader reads those as padding and masks them out), boxes outside the image.
With question files, we also list image ids asked about but without a feature file (fatal)
and feature files nobody asks about (informational).

`dataset` picks the layout of the release: "vqa" (COCO_<split>_<id>.jpg.npz, x [2048, n],
image_h/image_w/num_bbox, questions files with a "questions" list), "gqa" (<imageId>.npz,
x [n, 2048], width/height, questions files keyed by question id with "imageId"), or "vgd" /
"itm" (the grounding and matching features: as vqa without num_bbox, no question files).
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from mmnas.checkpoint_files import atomic_write, write_json_atomic
from mmnas.data.features import FEAT_DIM, MAX_REGIONS, BadFeatureFile, validate_features

# per dataset: x regions first?, the image-size keys (width, height), the metadata keys expected
LAYOUTS = {"vqa": (False, ("image_w", "image_h"), ("image_h", "image_w", "num_bbox")),
           "gqa": (True, ("width", "height"), ("width", "height")),
           # the bottom-up features of grounding (vgd/bua-r101-fix100) and matching
           # (itm/flickr_bua-r101-fix36): VQA's layout without num_bbox
           "vgd": (False, ("image_w", "image_h"), ("image_h", "image_w")),
           "itm": (False, ("image_w", "image_h"), ("image_h", "image_w"))}
USUAL_MIN_REGIONS = 10  # fewer regions than this is legal but unusual for bottom-up features: a warning

# Problem kinds that would break or corrupt training (non-zero exit), and mere warnings.
FATAL_KINDS = ("unreadable", "bad_name", "missing_keys", "bad_shape", "nan_inf", "bad_boxes",
               "duplicate_ids", "missing_images", "no_files")
WARNING_KINDS = ("missing_meta", "box_count_out_of_range", "x_not_float32", "zero_rows", "boxes_outside_image")


def image_id_of(file_name: str, dataset: str = "vqa") -> Optional[Union[int, str]]:
    """VQA-v2: the integer after the last '_' of the name, before the first '.' (None if there is
    none); GQA: the name without .npz (ids are strings)."""
    stem = os.path.basename(file_name).split(".", 1)[0]
    if dataset == "gqa":
        return stem or None
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def inspect_file(path: str, max_regions: int = MAX_REGIONS, min_regions: int = USUAL_MIN_REGIONS,
                 box_tolerance: float = 1.0, dataset: str = "vqa", feat_size: int = FEAT_DIM) -> dict:
    """Check one .npz file. Returns {"file", "image_id", "readable", "n", "problems":
    [(kind, detail)], "stats": [min, max, sum, count, zeros] or None}. The one error a file can
    have is the one training would stop on (validate_features); the rest are warnings."""
    regions_first, size_keys, meta_keys = LAYOUTS[dataset]
    result = {"file": path, "image_id": image_id_of(path, dataset), "readable": False, "n": None,
              "problems": [], "stats": None}
    problems = result["problems"]
    if result["image_id"] is None:
        problems.append(("bad_name", "no integer image id after the last '_' of the file name"))
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}  # decompress everything: checks CRCs
    except Exception as e:  # truncated zips raise BadZipFile, EOFError, ValueError, OSError...
        problems.append(("unreadable", f"{type(e).__name__}: {e}"))
        return result
    result["readable"] = True
    x = arrays.get("x")
    regions_axis = 0 if regions_first else 1
    if x is not None and x.ndim == 2 and x.shape[1 - regions_axis] == feat_size:
        result["n"] = x.shape[regions_axis]  # in the histogram even when n is out of range
    try:
        validate_features(path, arrays, max_regions, regions_first, feat_size)
    except BadFeatureFile as e:
        problems.append((e.kind, e.detail))
        if e.kind in ("missing_keys", "bad_shape"):
            return result  # the arrays cannot be interpreted further

    x, bbox = arrays["x"], arrays["bbox"]
    if regions_first:
        x = x.T  # [feat_size, n] below, as in the VQA-v2 files
    n = x.shape[1]
    missing_meta = [k for k in meta_keys if k not in arrays]
    if missing_meta:
        problems.append(("missing_meta", f"missing {missing_meta}"))
    if x.dtype != np.float32:
        problems.append(("x_not_float32", f"x dtype is {x.dtype}"))
    if not min_regions <= n <= max_regions:
        problems.append(("box_count_out_of_range", f"{n} regions, outside the usual {min_regions}..{max_regions}"))

    finite_x = np.isfinite(x)
    if finite_x.any():
        values = x[finite_x].astype(np.float64)
        result["stats"] = [float(values.min()), float(values.max()), float(values.sum()),
                           int(values.size), int((values == 0).sum())]
    zero_rows = int((np.abs(np.nan_to_num(x)).sum(axis=0) == 0).sum())
    if zero_rows:
        problems.append(("zero_rows", f"{zero_rows} all-zero regions (read as padding and masked out)"))

    if np.isfinite(bbox).all() and all(k in arrays for k in size_keys):
        b = bbox.astype(np.float64)
        w, h, tol = _scalar(arrays[size_keys[0]]), _scalar(arrays[size_keys[1]]), box_tolerance
        outside = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > w + tol) | (b[:, 3] > h + tol)
        if outside.any():
            problems.append(("boxes_outside_image", f"{int(outside.sum())} boxes outside the {w:g}x{h:g} image "
                                                    f"(first: row {int(np.argmax(outside))}: "
                                                    f"{b[np.argmax(outside)].round(1).tolist()})"))
    return result


def question_image_ids(question_files: Iterable[str], dataset: str = "vqa") -> Dict[Union[int, str], str]:
    """image id -> first file that asks about it, from questions or annotations JSON files
    (GQA: questions files, one object keyed by question id)."""
    if dataset not in ("vqa", "gqa"):
        raise ValueError(f"--questions reads VQA-v2 and GQA question files; leave it out for the {dataset} features")
    ids: Dict[Union[int, str], str] = {}
    for path in question_files:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        if dataset == "gqa":
            if not isinstance(data, dict):
                raise ValueError(f"{path} is not a GQA questions file (one object keyed by question id)")
            for entry in data.values():
                ids.setdefault(str(entry["imageId"]), os.path.basename(path))
            continue
        entries = data.get("questions", data.get("annotations")) if isinstance(data, dict) else None
        if entries is None:
            raise ValueError(f"{path} has neither a 'questions' nor an 'annotations' list")
        for entry in entries:
            ids.setdefault(int(entry["image_id"]), os.path.basename(path))
    return ids


def _list_npz(feat_dirs: Sequence[str]) -> List[str]:
    paths = []
    for folder in feat_dirs:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"feature folder {folder} does not exist")
        paths += [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".npz")]
    return paths


def check_feats(feat_dir: Union[str, Sequence[str]], question_files: Optional[Sequence[str]] = None,
                workers: int = 2, report_path: Optional[str] = None, png_path: Optional[str] = None,
                progress: bool = True, max_regions: int = MAX_REGIONS,
                min_regions: int = USUAL_MIN_REGIONS, box_tolerance: float = 1.0, max_listed: int = 10,
                dataset: str = "vqa", feat_size: int = FEAT_DIM) -> dict:
    """Check every .npz in `feat_dir` (one folder or several, e.g. train2014 + val2014 for VG
    questions); optionally write the JSON report and a PNG histogram of box counts.
    `report["ok"]` is False when something would break training."""
    feat_dirs = [feat_dir] if isinstance(feat_dir, str) else list(feat_dir)
    paths = _list_npz(feat_dirs)
    inspect = functools.partial(inspect_file, max_regions=max_regions, min_regions=min_regions,
                                box_tolerance=box_tolerance, dataset=dataset, feat_size=feat_size)
    results = _map(inspect, paths, workers, progress)
    results.sort(key=lambda r: r["file"])

    problems: Dict[str, List[dict]] = {kind: [] for kind in FATAL_KINDS + WARNING_KINDS}
    for r in results:
        for kind, detail in r["problems"]:
            problems[kind].append({"file": r["file"], "detail": detail})
    if not paths:
        problems["no_files"].append({"file": ", ".join(feat_dirs), "detail": "no .npz files found"})

    files_of_id: Dict[Union[int, str], List[str]] = {}
    for r in results:
        if r["image_id"] is not None:
            files_of_id.setdefault(r["image_id"], []).append(r["file"])
    for image_id, files in sorted(files_of_id.items()):
        if len(files) > 1:
            problems["duplicate_ids"].append({"file": files[0],
                                              "detail": f"image id {image_id} also in {files[1:]}"})

    box_counts = Counter(r["n"] for r in results if r["n"] is not None)
    stats = [r["stats"] for r in results if r["stats"] is not None]
    n_values = sum(s[3] for s in stats)
    feature_stats = {
        "min": min((s[0] for s in stats), default=None),
        "max": max((s[1] for s in stats), default=None),
        "mean": (sum(s[2] for s in stats) / n_values) if n_values else None,
        "frac_zero": (sum(s[4] for s in stats) / n_values) if n_values else None,
        "n_values": n_values,
    }
    counts = [n for n, c in box_counts.items() for _ in range(c)]

    questions = None
    if question_files:
        asked = question_image_ids(question_files, dataset)
        missing = sorted(set(asked) - set(files_of_id))
        unreferenced = sorted(set(files_of_id) - set(asked))
        for image_id in missing:
            problems["missing_images"].append({"file": asked[image_id],
                                               "detail": f"image id {image_id} has no feature file"})
        questions = {"files": list(question_files), "n_image_ids": len(asked),
                     "n_missing": len(missing), "missing_first": missing[:max_listed],
                     "n_unreferenced": len(unreferenced), "unreferenced_first": unreferenced[:max_listed]}

    fatal_count = sum(len(problems[k]) for k in FATAL_KINDS)
    report = {
        "feat_dirs": [os.path.abspath(d) for d in feat_dirs],
        "ok": fatal_count == 0,
        "n_files": len(paths),
        "n_readable": sum(r["readable"] for r in results),
        "box_count": {"min": min(counts, default=None), "max": max(counts, default=None),
                      "mean": float(np.mean(counts)) if counts else None},
        "box_count_hist": {str(n): box_counts[n] for n in sorted(box_counts)},
        "feature_stats": feature_stats,
        "fatal_count": fatal_count,
        "problem_counts": {kind: len(items) for kind, items in problems.items() if items},
        "problems": {kind: items for kind, items in problems.items() if items},
        "questions": questions,
    }
    if report_path:
        write_json_atomic(report, report_path, flag="", indent=1)
    if png_path:
        title = " + ".join(os.path.basename(os.path.normpath(d)) for d in feat_dirs)
        plot_box_counts(box_counts, png_path, title=title)
    return report


def _map(fn, paths: List[str], workers: int, progress: bool) -> List[dict]:
    """fn over paths, in a process pool when workers > 1, with a progress bar."""
    bar = None
    if progress:
        from mmnas.progress import progress_bar
        bar = progress_bar(total=len(paths), desc="check feats", unit="file")
    results = []
    if workers > 1 and len(paths) > 1:
        from mmnas.runtime import process_pool
        with process_pool(workers) as pool:
            chunk = max(1, min(64, len(paths) // (workers * 8)))
            for r in pool.map(fn, paths, chunksize=chunk):
                results.append(r)
                if bar is not None:
                    bar.update()
    else:
        for path in paths:
            results.append(fn(path))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return results


def plot_box_counts(box_counts: Dict[int, int], png_path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ns = sorted(box_counts)
    ax.bar(ns, [box_counts[n] for n in ns], width=0.9, color="tab:blue")
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("files")
    ax.set_title(f"box counts: {title} ({sum(box_counts.values())} files)")
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)


def format_report(report: dict, max_listed: int = 5) -> str:
    """A readable summary of a check_feats report."""
    lines = [f"feature folder(s): {', '.join(report['feat_dirs'])}",
             f"files: {report['n_files']}, readable: {report['n_readable']}"]
    bc, fs = report["box_count"], report["feature_stats"]
    if bc["min"] is not None:
        lines.append(f"boxes per image: min {bc['min']}, max {bc['max']}, mean {bc['mean']:.1f}")
    if fs["n_values"]:
        lines.append(f"feature values: min {fs['min']:.4g}, max {fs['max']:.4g}, mean {fs['mean']:.4g}, "
                     f"zero {100 * fs['frac_zero']:.1f}%")
    q = report["questions"]
    if q is not None:
        first = f" (first: {q['missing_first']})" if q["n_missing"] else ""
        lines.append(f"questions: {q['n_image_ids']} image ids asked about; {q['n_missing']} without a "
                     f"feature file{first}; {q['n_unreferenced']} feature files not asked about")
    for kind, items in report["problems"].items():
        severity = "ERROR" if kind in FATAL_KINDS else "warning"
        lines.append(f"{severity} {kind}: {len(items)}")
        for item in items[:max_listed]:
            lines.append(f"    {item['file']}: {item['detail']}")
        if len(items) > max_listed:
            lines.append(f"    ... and {len(items) - max_listed} more (see the JSON report)")
    lines.append("OK: nothing that would break training" if report["ok"] else
                 f"FAILED: {report['fatal_count']} problem(s) that would break training")
    return "\n".join(lines)
