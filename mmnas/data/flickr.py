"""Flickr30K image-text matching data in the reference layout (MILVLG/mmnas, spec section 2.1).

Under `<data_root>/itm/`:

    flickr_bua-r101-fix36/<flickr id>[.jpg].npz   x [2048, 36], bbox [36, 4] xyxy pixels, image_h, image_w
    f30k_precomp/{train,dev,test}_caps.txt        one raw caption per line, an image's 5 on consecutive lines
    f30k_precomp/{train,dev,test}_ids.txt         Karpathy imgid of each image (or of each caption)
    dataset_flickr30k.json                        Karpathy split file: images[*].filename -> imgid

Caption c belongs to image c // 5. The reference reads `train_ids.txt` as one line per image
and the dev/test ids files as one line per caption (it keeps every 5th line); this reader
accepts either form in every split, as long as it is unambiguous (one line per image, or one
per caption with the 5 lines of an image equal), and refuses anything else by file name.

A feature file's Flickr id is the integer after the last '_' and before the first '.' of its
name; dataset_flickr30k.json maps it (the filename stem) to the Karpathy imgid that the ids
files hold. Feature files missing from the JSON are ignored, as in the reference.

Captions: lower-cased, `. , ' ! ? " ( ) * # : ;` deleted, `-` and `/` made spaces, split on
whitespace (the tokeniser of data/vocab.py), cut or zero-padded to 50 ids. The vocabulary is
built from the caps files of all three splits in the order train, dev, test, words in order of
first appearance after PAD=0, UNK=1, CLS=2 (so the ids match the reference's embedding rows).

The image side (feature files, packed stores, preload, --CHECK_FEATS, bad-file errors) is the
shared RegionDataset: images are read per item through the .npz files or a memory-mapped
packed store, so hard-negative mining and evaluation read them on demand instead of holding a
copy of every training image in each process (the reference's 150 GB of RAM).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmnas.data.features import FEAT_DIM, DataError, image_id_from_name
from mmnas.data.regions import RegionDataset
from mmnas.data.vocab import CLS, PAD, UNK, encode_question, tokenize

ITM_DIR = "itm"
FEATURE_DIR = "flickr_bua-r101-fix36"
PRECOMP_DIR = "f30k_precomp"
KARPATHY_JSON = "dataset_flickr30k.json"
SPLITS = ("train", "dev", "test")
CAPTIONS_PER_IMAGE = 5
MAX_TOKEN = 50
MAX_REGIONS = 36
README_FLICKR = 'docs/matching.md, section "Data layout"'


def itm_path(data_root: str, *parts: str) -> str:
    return os.path.join(data_root, ITM_DIR, *parts)


def caps_path(data_root: str, split: str) -> str:
    return itm_path(data_root, PRECOMP_DIR, f"{split}_caps.txt")


def ids_path(data_root: str, split: str) -> str:
    return itm_path(data_root, PRECOMP_DIR, f"{split}_ids.txt")


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; see {README_FLICKR} for the Flickr30K layout "
                        f"(or point --DATA_ROOT at the folder holding itm/).") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); download it again ({README_FLICKR}).") from None
    while lines and not lines[-1].strip():  # a trailing blank line is not a caption
        lines.pop()
    return lines


def read_captions(data_root: str, split: str) -> List[str]:
    path = caps_path(data_root, split)
    captions = _read_lines(path)
    if not captions:
        raise DataError(f"{path} holds no captions; download it again ({README_FLICKR}).")
    if len(captions) % CAPTIONS_PER_IMAGE:
        raise DataError(f"{path} has {len(captions)} lines, not a multiple of {CAPTIONS_PER_IMAGE}: every image "
                        f"needs its {CAPTIONS_PER_IMAGE} captions on consecutive lines. The file is truncated "
                        f"or edited; download it again ({README_FLICKR}).")
    return captions


def read_image_ids(data_root: str, split: str, n_captions: int) -> List[str]:
    """The Karpathy imgid of every image of the split, in caption order (image k <-> captions 5k..5k+4)."""
    path = ids_path(data_root, split)
    ids = [line.strip() for line in _read_lines(path)]
    n_images = n_captions // CAPTIONS_PER_IMAGE
    if len(ids) == n_images:  # one line per image (the reference's train_ids.txt)
        return ids
    if len(ids) == n_captions:  # one line per caption (the reference's dev/test ids): keep every 5th
        for k in range(n_images):
            group = ids[CAPTIONS_PER_IMAGE * k:CAPTIONS_PER_IMAGE * (k + 1)]
            if len(set(group)) != 1:
                line = CAPTIONS_PER_IMAGE * k + 1
                raise DataError(f"{path}: lines {line}..{line + CAPTIONS_PER_IMAGE - 1} name different images "
                                f"{group}, but the {CAPTIONS_PER_IMAGE} captions of an image sit on consecutive "
                                f"lines of {caps_path(data_root, split)}; use the ids file of the same release.")
        return ids[::CAPTIONS_PER_IMAGE]
    raise DataError(f"{path} has {len(ids)} lines but {caps_path(data_root, split)} has {n_captions} captions: "
                    f"expected {n_images} lines (one per image) or {n_captions} (one per caption). "
                    f"Use the caps and ids files of the same release ({README_FLICKR}).")


def read_karpathy(data_root: str) -> Dict[str, str]:
    """Flickr id (the image filename stem, e.g. '1000092795') -> Karpathy imgid, both as strings."""
    path = itm_path(data_root, KARPATHY_JSON)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the Karpathy split file (caption_datasets.zip) maps feature "
                        f"files to image ids; see {README_FLICKR}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); the file is truncated or damaged, download it "
                        f"again ({README_FLICKR}).") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path} has no top-level list 'images'; is it the Karpathy dataset_flickr30k.json? "
                        f"See {README_FLICKR}.")
    mapping = {}
    for k, entry in enumerate(images):
        if not isinstance(entry, dict) or "filename" not in entry or "imgid" not in entry:
            raise DataError(f"{path}: images[{k}] lacks 'filename' or 'imgid'; download the file again "
                            f"({README_FLICKR}).")
        mapping[str(entry["filename"]).split(".", 1)[0]] = str(entry["imgid"])
    return mapping


def feature_files(data_root: str, karpathy: Dict[str, str]) -> Dict[str, str]:
    """Karpathy imgid -> .npz path for every feature file the JSON knows."""
    folder = itm_path(data_root, FEATURE_DIR)
    if not os.path.isdir(folder):
        raise DataError(f"feature folder {folder} does not exist; see {README_FLICKR}.")
    out: Dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".npz"):
                continue
            try:
                flickr_id = str(image_id_from_name(entry.name))
            except ValueError:
                raise DataError(f"{entry.path}: cannot read a Flickr id from the file name; expected "
                                f"<flickr id>.jpg.npz (digits after the last '_', before the first '.'). "
                                f"Rename or remove it.") from None
            imgid = karpathy.get(flickr_id)
            if imgid is None:
                continue  # not in the Karpathy split: ignored, as the reference does
            if imgid in out:
                raise DataError(f"{folder} holds two feature files for Flickr image {flickr_id}: "
                                f"{os.path.basename(out[imgid])} and {entry.name}; remove one.")
            out[imgid] = entry.path
    return out


def build_caption_vocab(data_root: str, splits: Sequence[str] = SPLITS) -> Dict[str, int]:
    """token -> id over the caps files of `splits` in order: PAD=0, UNK=1, CLS=2, then words by
    first appearance (the reference builds it over train, dev and test)."""
    token_to_ix = {PAD: 0, UNK: 1, CLS: 2}
    for split in splits:
        for caption in read_captions(data_root, split):
            for word in tokenize(caption):
                if word not in token_to_ix:
                    token_to_ix[word] = len(token_to_ix)
    return token_to_ix


class FlickrDataset(RegionDataset):
    """One item per caption: dataset[c] -> (caption_ids int64 [max_token], c). Caption c belongs
    to image c // 5; `image_arrays(k)` reads image k; `pair` / `collate_pairs` build model
    batches of (image, caption) pairs. Features are channels first, x [feat_size, n]."""

    regions_first = False
    readme_section = README_FLICKR

    def __init__(self, data_root: str, split: str, token_to_ix: Dict[str, int], *, max_token: int = MAX_TOKEN,
                 preload: bool = False, preload_workers: int = 8, progress: bool = True,
                 packed_feats: Optional[str] = None, max_regions: int = MAX_REGIONS, check_feats: bool = False,
                 feat_size: int = FEAT_DIM):
        super().__init__()
        if split not in SPLITS:
            raise DataError(f"unknown Flickr30K split {split!r}; use one of {', '.join(SPLITS)}")
        self.data_root, self.token_to_ix, self.max_token = data_root, token_to_ix, max_token
        self.captions = read_captions(data_root, split)
        self.image_ids = read_image_ids(data_root, split, len(self.captions))  # Karpathy imgid per image
        available = feature_files(data_root, read_karpathy(data_root))
        missing = [imgid for imgid in self.image_ids if imgid not in available]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.image_ids)} images of {ids_path(data_root, split)} have "
                            f"no feature file: first imgids {missing[:5]}. An imgid needs an entry in "
                            f"{itm_path(data_root, KARPATHY_JSON)} whose filename stem names a file in "
                            f"{itm_path(data_root, FEATURE_DIR)}; add the missing .npz files or use the "
                            f"Karpathy JSON of the same release ({README_FLICKR}).")
        image_paths = [available[imgid] for imgid in self.image_ids for _ in range(CAPTIONS_PER_IMAGE)]
        self._setup_images(image_paths, split=split, progress=progress, max_regions=max_regions,
                           packed_feats=packed_feats, check_feats=check_feats, preload=preload,
                           preload_workers=preload_workers, feat_size=feat_size)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def question_text(self, c: int) -> str:  # the name RegionDataset's error paths use
        return self.captions[c]

    def caption_ids(self, c: int) -> np.ndarray:
        """int64 [max_token]: caption c as word ids (UNK for unknown words, 0-padded)."""
        return encode_question(self.captions[c], self.token_to_ix, self.max_token)

    def image_arrays(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(region_feats float32 [n, feat_size], boxes float32 [n, 4]) of image k (do not modify)."""
        return self.region_arrays(CAPTIONS_PER_IMAGE * int(k))

    def __getitem__(self, c):
        c = int(c)
        return self.caption_ids(c), np.int64(c)

    def pair(self, image: int, caption: int):
        """One (image, caption) pair: (region_feats, boxes, caption_ids, image, caption)."""
        region_feats, boxes = self.image_arrays(image)
        return region_feats, boxes, self.caption_ids(caption), int(image), int(caption)

    def pair_batch(self, images: Sequence[int], captions: Sequence[int]) -> Dict[str, np.ndarray]:
        """collate_pairs of the pairs (images[j], captions[j]); each distinct image is read once."""
        arrays = {int(k): self.image_arrays(k) for k in set(int(k) for k in images)}
        ids = {int(c): self.caption_ids(c) for c in set(int(c) for c in captions)}
        return collate_pairs([(*arrays[int(k)], ids[int(c)], int(k), int(c)) for k, c in zip(images, captions)])


def collate_pairs(pairs) -> Dict[str, np.ndarray]:
    """(region_feats, boxes, caption_ids, image, caption) tuples -> a batch dict of numpy arrays:
    region_feats [B, Nmax, F] float32 and boxes [B, Nmax, 4] zero-padded to the batch's largest n
    (the model masks zero rows), caption_ids [B, T] int64, image_index [B], caption_index [B]."""
    n_max = max(len(p[0]) for p in pairs)
    region_feats = np.zeros((len(pairs), n_max, pairs[0][0].shape[1]), dtype=np.float32)
    boxes = np.zeros((len(pairs), n_max, 4), dtype=np.float32)
    for b, (feats, bx, _, _, _) in enumerate(pairs):
        region_feats[b, :len(feats)] = feats
        boxes[b, :len(bx)] = bx
    return {"region_feats": region_feats, "boxes": boxes,
            "caption_ids": np.stack([p[2] for p in pairs]).astype(np.int64),
            "image_index": np.array([p[3] for p in pairs], dtype=np.int64),
            "caption_index": np.array([p[4] for p in pairs], dtype=np.int64)}


# ----------------------------------------------------------------------------- training triplets

ROLES = ("pos", "negc", "negi")  # the order of the pairs in a triplet batch


def random_negative_tables(n_images: int, rng: np.random.Generator, hard_size: int = 5,
                           per_image: int = CAPTIONS_PER_IMAGE) -> Tuple[np.ndarray, np.ndarray]:
    """Uniform random negatives before (or instead of) mining: (captions [n_images, hard_size],
    images [n_captions, hard_size]), never a positive. (The reference's initial tables do not
    exclude positives; at 29k images the difference is one pair in ~6000.)"""
    n_captions = per_image * n_images
    if n_images < 2:
        raise ValueError("negatives need at least 2 images")
    # captions of other images: draw among n_captions - per_image, then skip over the own block
    own_start = (np.arange(n_images) * per_image)[:, None]
    captions = rng.integers(0, n_captions - per_image, size=(n_images, hard_size))
    captions = captions + per_image * (captions >= own_start)
    own = (np.arange(n_captions) // per_image)[:, None]
    images = rng.integers(0, n_images - 1, size=(n_captions, hard_size))
    images = images + (images >= own)
    return captions.astype(np.int64), images.astype(np.int64)


class TripletDataset:
    """Training items over a FlickrDataset: item c -> the three pairs of caption c (image i = c // 5):
    pos (i, c), negc (i, c') with c' uniform among the hard captions of i, negi (i', c) with i'
    uniform among the hard images of c. The draws are a function of (seed, epoch, c), so data
    loader workers and data-parallel ranks agree. Use with `collate_triplets`."""

    def __init__(self, dataset: FlickrDataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.hard_captions, self.hard_images = random_negative_tables(dataset.n_images, np.random.default_rng(seed))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_negatives(self, hard_captions: np.ndarray, hard_images: np.ndarray) -> None:
        """hard_captions [n_images, K] caption ids, hard_images [n_captions, K] image ids."""
        hard_captions, hard_images = np.asarray(hard_captions), np.asarray(hard_images)
        if hard_captions.shape[0] != self.dataset.n_images or hard_images.shape[0] != len(self.dataset):
            raise ValueError(f"negative tables of shape {list(hard_captions.shape)} / {list(hard_images.shape)} do "
                             f"not fit {self.dataset.n_images} images / {len(self.dataset)} captions")
        self.hard_captions, self.hard_images = hard_captions, hard_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, c):
        c = int(c)
        image = c // CAPTIONS_PER_IMAGE
        rng = np.random.default_rng((self.seed, self.epoch, c))
        neg_caption = int(self.hard_captions[image, rng.integers(self.hard_captions.shape[1])])
        neg_image = int(self.hard_images[c, rng.integers(self.hard_images.shape[1])])
        return self.dataset.pair(image, c), self.dataset.pair(image, neg_caption), self.dataset.pair(neg_image, c)


def collate_triplets(items) -> Dict[str, np.ndarray]:
    """Triplets -> one pair batch of 3B pairs ordered pos (B), negc (B), negi (B) (ROLES), so the
    model runs once; plus "batch_size" B. Split the logits with logits[:B], [B:2B], [2B:]."""
    batch = collate_pairs([item[r] for r in range(len(ROLES)) for item in items])
    batch["batch_size"] = np.int64(len(items))
    return batch
