"""The synthetic RefCOCO world (mmnas/data/synthetic_refcoco.py, tools/make_synthetic_refcoco.py):
written in the reference layout the real loader reads, deterministic, labels that train (the
named proposal is a positive), a shape-specific GT offset, and refusal to overwrite real data."""
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest

from mmnas.data.refcoco import RefCOCODataset, build_refcoco_vocab
from mmnas.data.synthetic_refcoco import COLOURS, SHAPE_OFFSETS, SHAPES, make_synthetic_refcoco
from mmnas.metrics.boxes import encode_deltas, xywh_to_xyxy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F = 32


def tool():
    spec = importlib.util.spec_from_file_location("make_synthetic_refcoco",
                                                  os.path.join(REPO, "tools", "make_synthetic_refcoco.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(root):
    h = hashlib.sha256()
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    summary = make_synthetic_refcoco(root, n_train_images=60, n_eval_images=20, feat_size=F, min_regions=6,
                                     max_regions=8, seed=3)
    return root, summary


def test_layout_and_loader(world):
    root, summary = world
    assert sorted(os.listdir(os.path.join(root, "vgd", "refcoco"))) == ["testA.json", "testB.json", "train.json",
                                                                         "val.json"]
    assert len(os.listdir(os.path.join(root, "vgd", "bua-r101-fix100"))) == 60 + 3 * 20
    vocab = build_refcoco_vocab(root, "refcoco", 15)
    assert set(vocab.token_to_ix) >= set(COLOURS) | set(SHAPES) | {"the", "that", "is", "a", "colored"}
    ds = RefCOCODataset(root, "refcoco", "train", vocab, progress=False, feat_size=F, check_feats=True)
    assert len(ds) == summary["expressions"]["train"] >= 100
    counts = ds.box_counts
    assert counts.min() == 6 and counts.max() == 8
    np.testing.assert_allclose(summary["chance"]["train"], 100 * np.mean(1.0 / counts), rtol=1e-6)
    items = [ds[i] for i in range(len(ds))]
    # the named proposal overlaps its GT by IoU >= 0.5: (nearly) every expression trains
    assert np.mean([item["scores_mask"] for item in items]) > 0.95
    assert 0.6 < summary["raw_iou"] < 0.8
    for item in items:
        assert np.abs(item["region_feats"]).sum(1).min() > 0  # no region looks like padding
        assert len(item["token_ids"]) == 15 and item["token_ids"][-1] == 0


def test_gt_offset_depends_on_the_shape(world):
    root, _ = world
    refs = json.load(open(os.path.join(root, "vgd", "refcoco", "train.json")))
    by_shape = {s: [] for s in SHAPES}
    feat_dir = os.path.join(root, "vgd", "bua-r101-fix100")
    for r in refs:
        with np.load(os.path.join(feat_dir, f"COCO_train2014_{r['image_id']:012d}.jpg.npz")) as npz:
            boxes = npz["bbox"]
        target = int(r["file_name"].rsplit("_", 1)[1].split(".")[0])
        gt = xywh_to_xyxy(r["bbox"])
        if gt[0] > 0 and gt[1] > 0 and gt[2] < r["width"] - 1 and gt[3] < r["height"] - 1:  # not clipped
            by_shape[r["name"]].append(encode_deltas(boxes[target], gt))
    for k, shape in enumerate(SHAPES):
        offsets = np.array(by_shape[shape])
        assert len(offsets) >= 5
        # the reference's x + w corner makes the box 1 pixel narrower than the decoded one: tolerance
        np.testing.assert_allclose(offsets.mean(0), SHAPE_OFFSETS[k], atol=0.02)


def test_deterministic_and_tool(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_synthetic_refcoco(a, n_train_images=5, n_eval_images=2, feat_size=8, seed=1)
    assert tool().main(["--out", b, "--train-images", "5", "--eval-images", "2", "--feat-size", "8",
                        "--seed", "1", "--quiet"]) == 0
    assert digest(a) == digest(b)
    c = str(tmp_path / "c")
    assert tool().main(["--out", c, "--dataset", "refcocog", "--train-images", "3", "--eval-images", "2",
                        "--feat-size", "8", "--quiet"]) == 0
    assert sorted(os.listdir(os.path.join(c, "vgd", "refcocog"))) == ["test.json", "train.json", "val.json"]


def test_refuses_real_data_and_bad_arguments(tmp_path, capsys):
    real = tmp_path / "real"
    (real / "vgd" / "refcoco").mkdir(parents=True)
    (real / "vgd" / "refcoco" / "train.json").write_text("[]")
    assert tool().main(["--out", str(real), "--quiet"]) == 2
    assert "not a synthetic RefCOCO" in capsys.readouterr().err
    assert (real / "vgd" / "refcoco" / "train.json").read_text() == "[]"
    assert tool().main(["--out", str(tmp_path / "x"), "--min-regions", "9", "--max-regions", "8", "--quiet"]) == 2
    assert "min_regions <= max_regions" in capsys.readouterr().err


def test_check_feats_reads_the_grounding_layout(world):
    """--dataset vgd: the bottom-up grounding features have no num_bbox, which is not a warning;
    question files are VQA's and GQA's only (one sentence)."""
    from mmnas.data.check_feats import check_feats
    root, _ = world
    feats = os.path.join(root, "vgd", "bua-r101-fix100")
    report = check_feats(feats, workers=1, progress=False, dataset="vgd", feat_size=F, min_regions=1)
    assert report["ok"] and report["n_files"] == report["n_readable"] > 0, report
    assert report["problem_counts"] == {}, report["problem_counts"]
    as_vqa = check_feats(feats, workers=1, progress=False, dataset="vqa", feat_size=F, min_regions=1)
    assert as_vqa["problem_counts"] == {"missing_meta": report["n_files"]}  # VQA's files carry num_bbox
    with pytest.raises(ValueError, match="--questions reads VQA-v2 and GQA question files"):
        check_feats(feats, question_files=[os.path.join(root, "vgd", "refcoco", "val.json")], workers=1,
                    progress=False, dataset="vgd", feat_size=F, min_regions=1)
