"""Hard-negative mining: never a positive, the top `keep` of the drawn candidates, and the same
table from any number of data-parallel shards gathered in anchor order."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.data.flickr import FlickrDataset, TripletDataset, build_caption_vocab  # noqa: E402
from mmnas.data.flickr_mining import (draw_candidates, gather_shards, mine_hard_negatives,  # noqa: E402
                                      mine_shard, shard_range)
from mmnas.data.synthetic_flickr import make_synthetic_flickr  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mine"))
    make_synthetic_flickr(root, n_train_images=11, n_dev_images=2, n_test_images=2, feat_size=8, seed=4)
    return FlickrDataset(root, "train", build_caption_vocab(root), progress=False, feat_size=8)


def pair_value(images, captions):
    """A fixed pseudo-random score per (image, caption), positives scored far above everything."""
    value = ((images * 7919 + captions * 104729) % 1000) / 1000.0
    return np.where(captions // 5 == images, 1e6, value)


def scorer(batch):
    # also check the batch holds what it names: the image's features and the caption's ids
    assert batch["region_feats"].shape[0] == len(batch["image_index"]) == len(batch["caption_index"])
    return pair_value(batch["image_index"], batch["caption_index"])


def test_candidates_never_positive():
    for anchor in range(10):
        caps = draw_candidates("captions", anchor, 10, 500, seed=1, epoch=2)
        assert caps.min() >= 0 and caps.max() < 50 and not (caps // 5 == anchor).any()
        assert len(np.unique(caps)) == 45  # every foreign caption can be drawn
    for anchor in range(50):
        imgs = draw_candidates("images", anchor, 10, 200, seed=1, epoch=2)
        assert imgs.min() >= 0 and imgs.max() < 10 and not (imgs == anchor // 5).any()
        assert len(np.unique(imgs)) == 9


def test_no_positive_and_top_of_the_candidates(dataset):
    hard_caps, hard_imgs = mine_hard_negatives(dataset, scorer, k=8, keep=5, anchors_per_batch=4, seed=3,
                                               epoch=1, progress=False)
    assert hard_caps.shape == (11, 5) and hard_imgs.shape == (55, 5)
    assert not (hard_caps // 5 == np.arange(11)[:, None]).any()
    assert not (hard_imgs == (np.arange(55) // 5)[:, None]).any()
    for image in range(11):  # the kept ones are the 5 best of the 8 drawn, best first
        cands = draw_candidates("captions", image, 11, 8, seed=3, epoch=1)
        values = pair_value(np.full(8, image), cands)
        expected = cands[np.argsort(-values, kind="stable")[:5]]
        assert hard_caps[image].tolist() == expected.tolist()
    for caption in (0, 17, 54):
        cands = draw_candidates("images", caption, 11, 8, seed=3, epoch=1)
        values = pair_value(cands, np.full(8, caption))
        assert hard_imgs[caption].tolist() == cands[np.argsort(-values, kind="stable")[:5]].tolist()
    TripletDataset(dataset).set_negatives(hard_caps, hard_imgs)  # the tables fit the training set


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_gathered_equal_one_process(dataset, world):
    one = mine_hard_negatives(dataset, scorer, k=6, keep=3, anchors_per_batch=5, seed=9, epoch=0, progress=False)
    for kind, n, expected in (("captions", 11, one[0]), ("images", 55, one[1])):
        shards = [mine_shard(dataset, scorer, kind, k=6, keep=3, anchors_per_batch=2, seed=9, epoch=0,
                             rank=r, world=world, progress=False) for r in range(world)]
        assert len({s.shape for s in shards}) == 1  # equal shapes, as an all-gather needs
        np.testing.assert_array_equal(gather_shards(shards, n), expected)
    # the all_gather hook: a fake collective that runs every rank and returns their rows in order
    calls = []

    def fake_all_gather(rows):
        calls.append(rows.shape)
        kind = "captions" if len(calls) == 1 else "images"
        return [rows] + [mine_shard(dataset, scorer, kind, k=6, keep=3, anchors_per_batch=5, seed=9, epoch=0,
                                    rank=r, world=world, progress=False) for r in range(1, world)]

    caps, imgs = mine_hard_negatives(dataset, scorer, k=6, keep=3, anchors_per_batch=5, seed=9, epoch=0,
                                     rank=0, world=world, all_gather=fake_all_gather, progress=False)
    np.testing.assert_array_equal(caps, one[0])
    np.testing.assert_array_equal(imgs, one[1])


def test_epochs_draw_new_candidates(dataset):
    a = mine_hard_negatives(dataset, scorer, k=6, keep=3, seed=9, epoch=0, progress=False)[1]
    b = mine_hard_negatives(dataset, scorer, k=6, keep=3, seed=9, epoch=1, progress=False)[1]
    assert (a != b).any()


def test_shard_ranges_cover_every_anchor_once():
    for n, world in ((55, 4), (11, 3), (3, 4)):
        covered = [a for r in range(world) for a in range(*shard_range(n, r, world)[:2])]
        assert covered == list(range(n))


def test_incomplete_gather_refused():
    with pytest.raises(ValueError, match="3 anchors need one each"):
        gather_shards([np.array([[1], [2]]), np.array([[-1], [-1]])], 3)
