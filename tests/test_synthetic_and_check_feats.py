"""The synthetic VQA-v2 has the real layout, is deterministic and not degenerate; check_feats
catches every kind of broken feature file we plant."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mmnas.data.check_feats import check_feats, image_id_of  # noqa: E402
from mmnas.data.synthetic import (MARKER_FILE, RAW_FILES, SPATIAL_FAMILY_WEIGHTS,  # noqa: E402
                                  feature_file_name, make_synthetic_vqa)

SIZES = dict(n_train_images=24, n_val_images=40, n_test_images=6, n_vg_images=8,
             questions_per_image=5, min_boxes=10, max_boxes=14)
SPLIT_FOLDERS = {"train": "train2014", "val": "val2014", "test": "test2015"}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalise(answer):
    """Just enough of the VQA answer normalisation for the forms the generator produces."""
    words = answer.lower().replace("!", " ").replace(".", " ").split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the"))


def read_json(vqa, key):
    with open(os.path.join(vqa, RAW_FILES[key]), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = make_synthetic_vqa(str(root), seed=3, **SIZES)
    return str(root), summary


def all_files(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


# ----------------------------------------------------------------------------- synthetic data

def test_layout_and_schema(dataset):
    root, summary = dataset
    vqa = os.path.join(root, "vqa")
    assert os.path.exists(os.path.join(vqa, MARKER_FILE))
    for rel in RAW_FILES.values():
        assert os.path.isfile(os.path.join(vqa, rel)), rel

    # Feature files: exact names, keys, shapes, dtypes, channels first, boxes inside the image.
    feature_ids = {}
    for split, folder in SPLIT_FOLDERS.items():
        names = sorted(os.listdir(os.path.join(vqa, "feats", folder)))
        assert len(names) == SIZES[f"n_{split}_images"]
        for name in names:
            assert name.startswith(f"COCO_{folder}_") and name.endswith(".jpg.npz")
            assert len(name.split("_")[-1].split(".")[0]) == 12
            feature_ids[image_id_of(name)] = folder
            with np.load(os.path.join(vqa, "feats", folder, name)) as d:
                assert set(d.files) == {"x", "bbox", "image_h", "image_w", "num_bbox"}
                x, bbox, n = d["x"], d["bbox"], int(d["num_bbox"])
                h, w = float(d["image_h"]), float(d["image_w"])
            assert x.dtype == np.float32 and bbox.dtype == np.float32
            assert x.shape == (2048, n) and bbox.shape == (n, 4)
            assert SIZES["min_boxes"] <= n <= SIZES["max_boxes"]
            assert x.min() >= 0 and np.isfinite(x).all() and (np.abs(x).sum(axis=0) > 0).all()
            assert (bbox[:, 0] >= 0).all() and (bbox[:, 1] >= 0).all()
            assert (bbox[:, 2] <= w - 1).all() and (bbox[:, 3] <= h - 1).all()
            assert (bbox[:, 2] > bbox[:, 0]).all() and (bbox[:, 3] > bbox[:, 1]).all()
    assert len(feature_ids) == sum(SIZES[f"n_{s}_images"] for s in SPLIT_FOLDERS)  # ids unique across splits

    # Questions and annotations.
    all_qids = []
    for part, folder in [("train", "train2014"), ("val", "val2014"), ("test", "test2015"), ("vg", None)]:
        qfile = read_json(vqa, f"{part}_questions")
        assert qfile["task_type"] == "Open-Ended" and "info" in qfile and "license" in qfile
        questions = qfile["questions"]
        assert len(questions) == summary["questions"][part] > 0
        for q in questions:
            assert set(q) == {"image_id", "question", "question_id"}
            assert q["question"].endswith("?")
            assert q["question_id"] // 1000 == q["image_id"]
            if folder is None:
                assert feature_ids[q["image_id"]] in ("train2014", "val2014")  # VG reuses COCO images
            else:
                assert feature_ids[q["image_id"]] == folder
        all_qids += [q["question_id"] for q in questions]
        if part == "test":
            continue
        annotations = read_json(vqa, f"{part}_annotations")["annotations"]
        assert [a["question_id"] for a in annotations] == [q["question_id"] for q in questions]
        for a in annotations:
            assert a["answer_type"] in ("yes/no", "number", "other") and a["question_type"]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
            normalised = Counter(normalise(x["answer"]) for x in a["answers"])
            top, count = normalised.most_common(1)[0]
            assert top == a["multiple_choice_answer"] and count >= 7
            if a["answer_type"] == "yes/no":
                assert top in ("yes", "no")
            if a["answer_type"] == "number":
                assert top.isdigit()
    assert len(all_qids) == len(set(all_qids))
    assert "test2015_annotations" not in " ".join(os.listdir(os.path.join(vqa, "raw")))


def test_answers_not_degenerate(dataset):
    root, _ = dataset
    vqa = os.path.join(root, "vqa")
    val = read_json(vqa, "val_annotations")["annotations"]
    answers = Counter(a["multiple_choice_answer"] for a in val)
    assert answers.most_common(1)[0][1] / len(val) < 0.35
    types = Counter(a["answer_type"] for a in val)
    assert all(types[t] / len(val) > 0.15 for t in ("yes/no", "number", "other")), types
    yes_no = Counter(a["multiple_choice_answer"] for a in val if a["answer_type"] == "yes/no")
    assert 0.3 < yes_no["yes"] / sum(yes_no.values()) < 0.7
    with open(os.path.join(vqa, "synthetic_truth.json")) as f:
        families = Counter(json.load(f)["question_family"].values())
    assert sum(families[f] for f in ("size_compare", "extreme_size", "nearest")) > 0.15 * sum(families.values())


def test_deterministic(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    make_synthetic_vqa(str(again), seed=3, workers=2, **SIZES)  # a pool must not change the bytes
    first, second = all_files(root), all_files(str(again))
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]][:3]
    other = tmp_path / "other"
    make_synthetic_vqa(str(other), seed=4, **SIZES)
    third = all_files(str(other))
    assert third["vqa/" + RAW_FILES["train_questions"]] != first["vqa/" + RAW_FILES["train_questions"]]


def test_refuses_to_overwrite_real_data(tmp_path):
    raw = tmp_path / "vqa" / "raw"
    raw.mkdir(parents=True)
    real = raw / "v2_OpenEnded_mscoco_train2014_questions.json"
    real.write_text("{}")
    small = dict(SIZES, n_train_images=3, n_val_images=2, n_test_images=1, n_vg_images=1)
    with pytest.raises(FileExistsError):
        make_synthetic_vqa(str(tmp_path), **small)
    assert load_tool("make_synthetic_vqa").main(["--out", str(tmp_path), "--quiet", "--train-images", "3",
                                                 "--val-images", "2", "--test-images", "1", "--vg-images", "1"]) == 2
    assert real.read_text() == "{}"
    make_synthetic_vqa(str(tmp_path), overwrite=True, **small)
    make_synthetic_vqa(str(tmp_path), **small)  # a synthetic dataset is replaced without asking
    assert json.loads(real.read_text())["questions"]


SPATIAL = dict(min_boxes=4, max_boxes=12, family_weights=SPATIAL_FAMILY_WEIGHTS,
               dominant_object_prob=0.7, filler_max_scale=0.3)


def test_spatial_world(tmp_path):
    """The spatial-heavy world of bench/synthetic_ablation.py: deterministic, mostly
    box-dependent questions, often one object that dwarfs all other regions."""
    sizes = dict(SIZES, n_train_images=40, n_val_images=20)
    spatial = dict(sizes, **SPATIAL)
    summary = make_synthetic_vqa(str(tmp_path / "a"), seed=3, **spatial)
    assert summary["boxes"]["min"] >= 4 and summary["boxes"]["max"] <= 12
    make_synthetic_vqa(str(tmp_path / "b"), seed=3, workers=2, **spatial)
    first, second = all_files(str(tmp_path / "a")), all_files(str(tmp_path / "b"))
    assert first == second
    vqa = str(tmp_path / "a" / "vqa")
    with open(os.path.join(vqa, "synthetic_truth.json")) as f:
        truth = json.load(f)
    families = Counter(truth["question_family"].values())
    assert sum(families[f] for f in ("size_compare", "extreme_size", "nearest")) > 0.5 * sum(families.values())
    dominant = 0
    split_of = {folder: split for split, folder in SPLIT_FOLDERS.items()}
    for image_id, image in truth["images"].items():
        name = feature_file_name(split_of[image["split"]], int(image_id))
        with np.load(os.path.join(vqa, "feats", image["split"], name)) as z:
            boxes = z["bbox"]
        areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        top = np.sort(areas)[::-1]
        object_regions = [o["region"] for o in image["objects"]]
        if top[0] >= 4 * top[1] and int(np.argmax(areas)) in object_regions:
            dominant += 1
    assert dominant > 0.4 * len(truth["images"])
    with pytest.raises(ValueError):
        make_synthetic_vqa(str(tmp_path / "c"), family_weights={"left_of": 1.0}, **sizes)
    with pytest.raises(ValueError):
        make_synthetic_vqa(str(tmp_path / "c"), dominant_object_prob=1.5, **sizes)


# ----------------------------------------------------------------------------- check_feats

@pytest.fixture
def val_copy(dataset, tmp_path):
    """A private copy of the val features and questions, free to break."""
    vqa = os.path.join(dataset[0], "vqa")
    feats = tmp_path / "val2014"
    shutil.copytree(os.path.join(vqa, "feats", "val2014"), feats)
    questions = tmp_path / "questions.json"
    shutil.copy(os.path.join(vqa, RAW_FILES["val_questions"]), questions)
    return str(feats), str(questions), tmp_path


def run_tool(feats, questions, tmp_path):
    argv = [feats, "--questions", questions, "--workers", "1", "--quiet",
            "--report", str(tmp_path / "report.json")]
    code = load_tool("check_feats").main(argv)
    with open(tmp_path / "report.json") as f:
        return code, json.load(f)


def test_check_feats_clean(val_copy):
    feats, questions, tmp_path = val_copy
    code, report = run_tool(feats, questions, tmp_path)
    assert code == 0 and report["ok"] and report["problems"] == {}
    assert report["n_files"] == report["n_readable"] == SIZES["n_val_images"]
    assert sum(report["box_count_hist"].values()) == SIZES["n_val_images"]
    assert report["questions"]["n_missing"] == 0 and report["questions"]["n_unreferenced"] == 0
    assert 0 < report["feature_stats"]["frac_zero"] < 1
    assert os.path.getsize(tmp_path / "report.png") > 0
    # The pool gives the same answer as a single process.
    pooled = check_feats(feats, [questions], workers=2, progress=False)
    assert pooled["box_count_hist"] == report["box_count_hist"] and pooled["ok"]


def rewrite(path, **changes):
    with np.load(path) as d:
        arrays = {k: d[k].copy() for k in d.files}
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key])
    np.savez(path, **arrays)


def nan_x(x):
    x[5, 0] = np.nan
    return x


def inverted_box(b):
    b[0, 2] = b[0, 0] - 5
    return b


@pytest.mark.parametrize("fault, kind", [("nan", "nan_inf"), ("truncated", "unreadable"),
                                         ("inverted_box", "bad_boxes"), ("missing_image", "missing_images"),
                                         ("channels_last", "bad_shape")])
def test_check_feats_flags(val_copy, fault, kind):
    feats, questions, tmp_path = val_copy
    victim = os.path.join(feats, sorted(os.listdir(feats))[3])
    if fault == "nan":
        rewrite(victim, x=nan_x)
    elif fault == "truncated":
        with open(victim, "rb") as f:
            data = f.read()
        with open(victim, "wb") as f:
            f.write(data[: len(data) // 2])
    elif fault == "inverted_box":
        rewrite(victim, bbox=inverted_box)
    elif fault == "channels_last":
        rewrite(victim, x=lambda x: np.ascontiguousarray(x.T))
    elif fault == "missing_image":
        os.remove(victim)
    code, report = run_tool(feats, questions, tmp_path)
    assert code != 0 and not report["ok"]
    assert kind in report["problems"], report["problem_counts"]
    if fault == "missing_image":
        assert report["questions"]["missing_first"] == [image_id_of(victim)]
    else:
        assert report["problems"][kind][0]["file"] == victim
    assert set(report["problem_counts"]) == {kind}  # nothing else is blamed


def test_check_feats_exit_code_subprocess(val_copy):
    feats, questions, tmp_path = val_copy
    tool = os.path.join(REPO, "tools", "check_feats.py")
    args = [sys.executable, tool, feats, "--questions", questions, "--quiet", "--no-png",
            "--report", str(tmp_path / "r.json")]
    assert subprocess.run(args, capture_output=True, cwd=str(tmp_path)).returncode == 0
    victim = os.path.join(feats, sorted(os.listdir(feats))[0])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    done = subprocess.run(args, capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unreadable" in done.stdout
