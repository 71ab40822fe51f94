"""Flickr30K files in the reference layout: the synthetic world, the dataset (caption items, image
access, pair/triplet batches), the vocabulary, and the errors that name the bad file."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mmnas.data.features import DataError  # noqa: E402
from mmnas.data.flickr import (FlickrDataset, TripletDataset, build_caption_vocab, caps_path,  # noqa: E402
                               collate_triplets, ids_path, itm_path, random_negative_tables, read_image_ids)
from mmnas.data.synthetic_flickr import make_synthetic_flickr  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flickr"))
    make_synthetic_flickr(root, n_train_images=12, n_dev_images=4, n_test_images=3, feat_size=16, seed=1)
    return root


def fresh_world(tmp_path):
    make_synthetic_flickr(str(tmp_path), n_train_images=6, n_dev_images=3, n_test_images=2, feat_size=16, seed=2)
    return str(tmp_path)


def test_reference_layout_and_id_asymmetry(world):
    lines = lambda p: open(p, encoding="utf-8").read().splitlines()
    assert len(lines(caps_path(world, "train"))) == 60 and len(lines(ids_path(world, "train"))) == 12
    assert len(lines(caps_path(world, "dev"))) == 20 and len(lines(ids_path(world, "dev"))) == 20
    npz = np.load(os.path.join(itm_path(world, "flickr_bua-r101-fix36"), "1000000.jpg.npz"))
    assert npz["x"].shape == (16, 3) and npz["bbox"].shape == (3, 4)
    assert 300 <= int(npz["image_h"]) <= 600 and 300 <= int(npz["image_w"]) <= 600
    data = json.load(open(itm_path(world, "dataset_flickr30k.json")))
    assert data["images"][0]["filename"] == "1000000.jpg" and data["images"][0]["imgid"] == 0


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        make_synthetic_flickr(str(out), 3, 2, 2, feat_size=8, seed=5)
    for rel in ("itm/f30k_precomp/train_caps.txt", "itm/flickr_bua-r101-fix36/1000004.jpg.npz",
                "itm/dataset_flickr30k.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_captions_name_objects_of_their_image(world):
    ds = FlickrDataset(world, "train", build_caption_vocab(world), progress=False, feat_size=16)
    data = json.load(open(itm_path(world, "dataset_flickr30k.json")))
    for c in (0, 7, 59):
        image = c // 5
        assert ds.captions[c] in [s["raw"] for s in data["images"][image]["sentences"]]


def test_dataset_items_images_and_vocab(world):
    vocab = build_caption_vocab(world)
    assert list(vocab)[:3] == ["PAD", "UNK", "CLS"]
    words = "".join(list(vocab)[3:])
    assert words.isalpha() and words.islower()  # punctuation deleted, capitals lowered
    ds = FlickrDataset(world, "dev", vocab, progress=False, feat_size=16)
    assert len(ds) == 20 and ds.n_images == 4 and ds.image_ids == ["12", "13", "14", "15"]
    ids, index = ds[7]
    assert ids.shape == (50,) and ids.dtype == np.int64 and int(index) == 7
    words = [w for w in ds.captions[7].lower().replace("-", " ").split()]
    assert (ids > 0).sum() == len(words)  # punctuation removed, '-' split, nothing lost
    feats, boxes = ds.image_arrays(1)
    npz = np.load(os.path.join(itm_path(world, "flickr_bua-r101-fix36"), "1000013.jpg.npz"))
    np.testing.assert_array_equal(feats, npz["x"].T)
    np.testing.assert_array_equal(boxes, npz["bbox"])


def test_pair_batch_and_triplets(world):
    ds = FlickrDataset(world, "train", build_caption_vocab(world), progress=False, feat_size=16)
    batch = ds.pair_batch([0, 3, 3], [1, 15, 2])
    assert batch["region_feats"].shape == (3, 3, 16) and batch["caption_ids"].shape == (3, 50)
    np.testing.assert_array_equal(batch["region_feats"][1], ds.image_arrays(3)[0])
    np.testing.assert_array_equal(batch["caption_ids"][2], ds.caption_ids(2))
    triplets = TripletDataset(ds, seed=3)
    out = collate_triplets([triplets[c] for c in (0, 9, 33)])
    assert int(out["batch_size"]) == 3 and out["region_feats"].shape[0] == 9
    img, cap = out["image_index"], out["caption_index"]
    assert img[:3].tolist() == [0, 1, 6] and cap[:3].tolist() == [0, 9, 33]  # positives
    assert img[3:6].tolist() == [0, 1, 6] and all(c // 5 != i for c, i in zip(cap[3:6], img[3:6]))  # negc
    assert cap[6:].tolist() == [0, 9, 33] and all(i != c // 5 for c, i in zip(cap[6:], img[6:]))  # negi
    again = collate_triplets([triplets[c] for c in (0, 9, 33)])
    np.testing.assert_array_equal(again["caption_index"], cap)  # a function of (seed, epoch, c)


def test_random_negative_tables_exclude_positives():
    caps, imgs = random_negative_tables(7, np.random.default_rng(0), hard_size=50)
    assert caps.shape == (7, 50) and imgs.shape == (35, 50)
    assert (caps // 5 != np.arange(7)[:, None]).all() and (imgs != np.arange(35)[:, None] // 5).all()
    assert caps.min() >= 0 and caps.max() < 35 and imgs.min() >= 0 and imgs.max() < 7


def test_ids_one_line_per_caption_in_train_is_accepted(tmp_path):
    root = fresh_world(tmp_path)
    per_caption = [line for line in open(ids_path(root, "train")).read().split() for _ in range(5)]
    open(ids_path(root, "train"), "w").write("\n".join(per_caption) + "\n")
    assert read_image_ids(root, "train", 30) == [str(k) for k in range(6)]


def test_caption_count_not_multiple_of_five(tmp_path):
    root = fresh_world(tmp_path)
    lines = open(caps_path(root, "dev")).read().splitlines()
    open(caps_path(root, "dev"), "w").write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"dev_caps.txt has 14 lines, not a multiple of 5"):
        FlickrDataset(root, "dev", build_caption_vocab(root, ["train"]), progress=False, feat_size=16)


def test_ids_count_mismatch_names_both_files(tmp_path):
    root = fresh_world(tmp_path)
    lines = open(ids_path(root, "train")).read().splitlines()
    open(ids_path(root, "train"), "w").write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train_ids.txt has 5 lines but .*train_caps.txt has 30 captions"):
        FlickrDataset(root, "train", build_caption_vocab(root), progress=False, feat_size=16)


def test_mixed_ids_in_a_caption_group(tmp_path):
    root = fresh_world(tmp_path)
    lines = open(ids_path(root, "dev")).read().splitlines()
    lines[2] = "99"
    open(ids_path(root, "dev"), "w").write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev_ids.txt: lines 1..5 name different images"):
        FlickrDataset(root, "dev", build_caption_vocab(root), progress=False, feat_size=16)


def test_ids_missing_from_karpathy_json(tmp_path):
    root = fresh_world(tmp_path)
    path = itm_path(root, "dataset_flickr30k.json")
    data = json.load(open(path))
    data["images"] = [im for im in data["images"] if im["imgid"] != 7]
    json.dump(data, open(path, "w"))
    with pytest.raises(DataError, match=r"1 of 3 images of .*dev_ids.txt have no feature file: first imgids \['7'\]"):
        FlickrDataset(root, "dev", build_caption_vocab(root), progress=False, feat_size=16)


def test_missing_files_and_bad_json(tmp_path):
    root = fresh_world(tmp_path)
    os.remove(caps_path(root, "test"))
    with pytest.raises(DataError, match=r"test_caps.txt does not exist; see docs/matching.md"):
        FlickrDataset(root, "test", {"PAD": 0, "UNK": 1, "CLS": 2}, progress=False, feat_size=16)
    open(itm_path(root, "dataset_flickr30k.json"), "w").write("{broken")
    with pytest.raises(DataError, match=r"dataset_flickr30k.json is not valid JSON"):
        FlickrDataset(root, "dev", {"PAD": 0, "UNK": 1, "CLS": 2}, progress=False, feat_size=16)


def test_bad_feature_file_is_found_by_check_feats(tmp_path):
    root = fresh_world(tmp_path)
    open(os.path.join(itm_path(root, "flickr_bua-r101-fix36"), "1000007.jpg.npz"), "wb").write(b"not a zip")
    with pytest.raises(DataError, match=r"1 of 3 feature files of split 'dev' cannot be used:\n.*1000007.jpg.npz"):
        FlickrDataset(root, "dev", build_caption_vocab(root), progress=False, feat_size=16, check_feats=True)


def test_feature_width_refused_by_name(tmp_path):
    root = fresh_world(tmp_path)
    with pytest.raises(DataError, match=r"features are 16 wide .* model.feat_size is 2048"):
        FlickrDataset(root, "dev", build_caption_vocab(root), progress=False)


def test_tool_writes_and_refuses_real_data(tmp_path, capsys):
    out = tmp_path / "d"
    tool = os.path.join(REPO, "tools", "make_synthetic_flickr.py")
    r = subprocess.run([sys.executable, tool, "--out", str(out), "--train-images", "3", "--dev-images", "2",
                        "--test-images", "2", "--feat-size", "8", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "synthetic Flickr30K" in r.stdout
    os.remove(out / "itm" / "README_SYNTHETIC.txt")
    spec = importlib.util.spec_from_file_location("make_synthetic_flickr", tool)  # in process: no second import
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(out), "--quiet"]) == 2
    assert "not marked synthetic" in capsys.readouterr().err


def test_images_read_from_a_packed_store(tmp_path):
    """With a packed store beside the feature folder (tools/pack_feats.py), images are read from
    the one memory-mapped file: same arrays, no .npz read."""
    from mmnas.data.features import load_npz
    from mmnas.data.packed import store_dir_for, write_store
    root = fresh_world(tmp_path)
    folder = itm_path(root, "flickr_bua-r101-fix36")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
    write_store(store_dir_for(folder), ((os.path.basename(p), *load_npz(p, feat_size=16), os.path.getsize(p))
                                        for p in paths), dtype="float32", dim=16)
    expected = FlickrDataset(root, "dev", build_caption_vocab(root), progress=False, feat_size=16,
                             packed_feats="off").image_arrays(2)
    for p in paths:
        open(p, "wb").write(b"junk")  # reading any .npz now fails (the files must still be listed)
    ds = FlickrDataset(root, "dev", build_caption_vocab(root), progress=False, feat_size=16)
    assert ds.packed_images == 3
    for got, want in zip(ds.image_arrays(2), expected):
        np.testing.assert_array_equal(got, want)
