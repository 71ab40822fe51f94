"""The RefCOCO dataset (mmnas/data/refcoco.py) on small generated files in the reference layout:
vocabulary, 14 words + PAD, labels by hand (IoU-weighted positives, masks, normalised deltas),
collate padding, every split, and the errors that name the file and the fix."""
import json
import os

import numpy as np
import pytest

from mmnas.data.features import DataError
from mmnas.data.refcoco import (RefCOCODataset, build_refcoco_vocab, collate_grounding, encode_tokens,
                                make_labels, split_parts)

F = 16  # feature width of these files (model.feat_size)
IMAGES = {  # image id -> (proposals xyxy, height, width)
    11: ([[0, 0, 9, 9], [0, 0, 19, 9], [50, 50, 59, 59]], 100, 120),
    22: ([[10, 10, 29, 29], [5, 5, 14, 14]], 80, 60),
}


def ref(tokens, image_id, bbox, split):
    h, w = IMAGES[image_id][1:] if image_id in IMAGES else (50, 50)
    return {"tokens": tokens, "image_id": image_id, "bbox": bbox, "split": split, "height": h, "width": w,
            "file_name": f"COCO_train2014_{image_id:012d}_1.jpg", "name": "thing"}


def write_layout(root, datasets=("refcoco",)):
    feat_dir = os.path.join(root, "vgd", "bua-r101-fix100")
    os.makedirs(feat_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for iid, (boxes, h, w) in IMAGES.items():
        np.savez(os.path.join(feat_dir, f"COCO_train2014_{iid:012d}.jpg.npz"),
                 x=rng.uniform(0.1, 1, size=(F, len(boxes))).astype(np.float32),
                 bbox=np.array(boxes, dtype=np.float32), image_h=np.int64(h), image_w=np.int64(w))
    splits = {
        "train": [ref(["the", "left", "box"], 11, [0, 0, 9, 9], "train"),
                  ref(["far", "away"], 11, [200, 200, 10, 10], "train"),
                  ref(["big", "square"], 22, [10, 10, 19, 19], "train")],
        "val": [ref(["small", "square"], 22, [5, 5, 9, 9], "val")],
        "testA": [ref(["the", "man"], 11, [50, 50, 9, 9], "testA")],
        "testB": [ref(["a", "cat", "on", "the", "left"], 22, [10, 10, 19, 19], "testB")],
        "test": [ref(["word"] * 20, 11, [0, 0, 9, 9], "test")],
    }
    for dataset in datasets:
        os.makedirs(os.path.join(root, "vgd", dataset), exist_ok=True)
        parts = ("train", "val", "test") if dataset == "refcocog" else ("train", "val", "testA", "testB")
        for part in parts:
            with open(os.path.join(root, "vgd", dataset, f"{part}.json"), "w") as f:
                json.dump(splits[part], f)
    return root


@pytest.fixture
def root(tmp_path):
    return write_layout(str(tmp_path), ("refcoco", "refcocog"))


def open_split(root, split, dataset="refcoco", **kw):
    vocab = build_refcoco_vocab(root, dataset, max_token=15)
    return RefCOCODataset(root, dataset, split, vocab, progress=False, feat_size=F, **kw)


def test_vocab_over_all_splits_and_encoding(root):
    vocab = build_refcoco_vocab(root, "refcoco", max_token=15)
    words = ["the", "left", "box", "far", "away", "big", "square", "small", "man", "a", "cat", "on"]
    assert vocab.token_to_ix == {"PAD": 0, "UNK": 1, "CLS": 2, **{w: 3 + i for i, w in enumerate(words)}}
    assert len(vocab.sources) == 4 and vocab.ans_to_ix == {}
    ids = encode_tokens(["the", "cat", "zebra"], vocab.token_to_ix, 15)
    assert ids.tolist() == [3, 13, 1] + [0] * 12
    long = encode_tokens(["left"] * 20, vocab.token_to_ix, 15)
    assert long.tolist() == [4] * 14 + [0]  # 14 words, the 15th step always PAD


def test_labels_by_hand():
    proposals = [[0, 0, 9, 9], [0, 0, 19, 9], [50, 50, 59, 59]]
    score_target, scores_mask, deltas, bbox_mask = make_labels(proposals, [0, 0, 9, 9])
    # IoUs 1, 0.5 (100 of 200 pixels), 0 -> positives 1 and 0.5, normalised
    np.testing.assert_allclose(score_target, [1 / 1.5, 0.5 / 1.5, 0.0], rtol=1e-6)
    assert scores_mask == 1.0 and bbox_mask.tolist() == [1.0, 1.0, 0.0]
    # proposal 1 (w 20, centre 10) -> GT (w 10, centre 5): dx = -0.25, dw = log 0.5; / (0.1, 0.1, 0.2, 0.2)
    np.testing.assert_allclose(deltas[1], [-2.5, 0.0, np.log(0.5) / 0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(deltas[0], 0.0, atol=1e-7)
    assert deltas.dtype == np.float32 and deltas.shape == (3, 4)
    # no proposal reaches 0.5: nothing trains, targets still computed
    score_target, scores_mask, deltas, bbox_mask = make_labels(proposals, [200, 200, 210, 210])
    assert scores_mask == 0.0 and score_target.sum() == 0 and bbox_mask.sum() == 0 and np.isfinite(deltas).all()


def test_items_and_collate(root):
    ds = open_split(root, "train")
    assert len(ds) == 3 and ds.question_ids == ["train/0", "train/1", "train/2"]
    item = ds[0]
    assert set(item) == {"region_feats", "boxes", "token_ids", "score_target", "scores_mask", "delta_targets",
                         "bbox_mask", "gt_box", "image_size", "index"}
    assert item["region_feats"].shape == (3, F) and item["token_ids"].shape == (15,)
    np.testing.assert_allclose(item["score_target"], [1 / 1.5, 0.5 / 1.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(item["gt_box"], [0, 0, 9, 9])
    np.testing.assert_array_equal(item["image_size"], [100, 120])  # (height, width)
    assert ds[1]["scores_mask"] == 0.0
    batch = collate_grounding([ds[2], ds[0], ds[1]])
    assert batch["region_feats"].shape == (3, 3, F) and batch["boxes"].shape == (3, 3, 4)
    assert batch["score_target"].shape == (3, 3) and batch["delta_targets"].shape == (3, 3, 4)
    assert batch["bbox_mask"].shape == (3, 3) and batch["token_ids"].shape == (3, 15)
    np.testing.assert_array_equal(batch["scores_mask"], [1, 1, 0])
    np.testing.assert_array_equal(batch["index"], [2, 0, 1])
    np.testing.assert_array_equal(batch["image_size"][0], [80, 60])
    # image 22 has 2 regions: the third row is zero padding everywhere
    assert np.abs(batch["region_feats"][0, 2]).sum() == 0 and batch["bbox_mask"][0, 2] == 0
    assert batch["score_target"][0, 2] == 0 and np.abs(batch["delta_targets"][0, 2]).sum() == 0


def test_every_split_selectable(root):
    assert len(open_split(root, "train+val")) == 4
    for split, n in (("val", 1), ("testA", 1), ("testB", 1)):
        assert len(open_split(root, split)) == n
    ds = open_split(root, "test", dataset="refcocog")
    assert ds.question_ids == ["test/0"]
    assert split_parts("refcocog", "train+val") == ["train", "val"]
    with pytest.raises(DataError, match="unknown refcocog split 'testA'.*train, val, test"):
        open_split(root, "testA", dataset="refcocog")
    with pytest.raises(DataError, match="unknown refcoco split 'test'"):
        split_parts("refcoco", "test")
    with pytest.raises(DataError, match="unknown grounding dataset 'refclef'"):
        split_parts("refclef", "train")


def test_score_through_dataset(root):
    ds = open_split(root, "train")
    gt = np.stack([ds.gt_boxes[eid] for eid in ds.question_ids])
    s = ds.score(ds.result_entries(gt, [0, 0, 0]))
    assert s["overall"] == 100.0 and s["n_expressions"] == 3
    assert "accuracy@0.5 100.00" in ds.format_scores(s)


def test_missing_files_and_folders(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DataError, match=r"(?s)missing:.*vgd/refcoco/train.json.*bua-r101-fix100.*--DATA_ROOT"):
        RefCOCODataset(root, "refcoco", "train", None, progress=False)
    with pytest.raises(DataError, match=r"no split file of refcoco.*train.json, val.json, testA.json, testB.json"):
        build_refcoco_vocab(root, "refcoco", 15)


def test_bad_json_and_fields(root):
    path = os.path.join(root, "vgd", "refcoco", "val.json")
    with open(path, "w") as f:
        f.write('[{"tokens": ["a"],\n "image_id": 1')
    with pytest.raises(DataError, match=r"val.json is not valid JSON: .* line 2.*truncated"):
        open_split(root, "val")
    with open(path, "w") as f:
        json.dump({"refs": []}, f)
    with pytest.raises(DataError, match=r"val.json holds a JSON dict, expected a list"):
        open_split(root, "val")
    entry = ref(["x"], 22, [1, 2, 3, 4], "val")
    for field, value, message in (("tokens", None, r"lacks the field\(s\) \['tokens'\]"),
                                  ("image_id", "22", "has image_id = '22', expected an integer"),
                                  ("bbox", [1, 2, 3], r"has bbox = \[1, 2, 3\], expected \[x, y, w, h\]"),
                                  ("height", 0, "has height = 0, expected a positive integer")):
        bad = dict(entry)
        if value is None:
            del bad[field]
        else:
            bad[field] = value
        with open(path, "w") as f:
            json.dump([entry, bad], f)
        with pytest.raises(DataError, match=f"val.json: entry 1 {message}"):
            open_split(root, "val")


def test_missing_image_refused_or_dropped(root):
    path = os.path.join(root, "vgd", "refcoco", "testB.json")
    with open(path, "w") as f:
        json.dump([ref(["a"], 22, [1, 1, 5, 5], "testB"), ref(["b"], 99, [1, 1, 5, 5], "testB")], f)
    with pytest.raises(DataError, match=r"1 of 2 expressions .* testB/1 \(image 99\).*--DROP_MISSING=True"):
        open_split(root, "testB")
    with pytest.warns(UserWarning, match="Dropping them"):
        ds = open_split(root, "testB", drop_missing_images=True)
    assert ds.question_ids == ["testB/0"]


def test_check_feats_compares_image_sizes(root):
    assert len(open_split(root, "train", check_feats=True)) == 3
    path = os.path.join(root, "vgd", "refcoco", "val.json")
    wrong = ref(["small"], 22, [5, 5, 9, 9], "val")
    wrong["height"] = 81
    with open(path, "w") as f:
        json.dump([wrong], f)
    assert len(open_split(root, "val")) == 1  # only --CHECK_FEATS reads the sizes
    with pytest.raises(DataError, match=r"image_h, image_w = 80, 60 but expression val/0 says height, width = 81, 60"):
        open_split(root, "val", check_feats=True)


def test_feature_width_refused_by_name(root):
    vocab = build_refcoco_vocab(root, "refcoco", 15)
    with pytest.raises(DataError, match="model.feat_size is 2048"):
        RefCOCODataset(root, "refcoco", "train", vocab, progress=False, feat_size=2048)


def test_preload_and_packed_store_give_the_same_items(root):
    from mmnas.data.features import load_npz
    from mmnas.data.packed import store_dir_for, write_store
    plain = open_split(root, "train")
    preloaded = open_split(root, "train", preload=True)
    folder = os.path.join(root, "vgd", "bua-r101-fix100")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".npz"))
    write_store(store_dir_for(folder), ((os.path.basename(p), *load_npz(p, feat_size=F), os.path.getsize(p))
                                        for p in paths), dtype="float32", dim=F)
    packed = open_split(root, "train")
    assert packed.packed_images == 2 and plain.packed_images == 0
    for i in range(len(plain)):
        a, b, c = plain[i], preloaded[i], packed[i]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            np.testing.assert_array_equal(a[key], c[key], err_msg=key)
