"""VQA-v2 as a paddle Dataset: (region features, boxes, question ids, soft answer scores, index).

Everything that can be wrong with the data (missing files, questions without features,
broken JSON) is checked in the constructor, so a run fails in seconds, not hours in.
Features are read per image, not per question (~5 questions share an image): with
preload=True each needed image is read once into memory; otherwise each item reads its file
(DataLoader workers do that in parallel).

When a feature folder has a packed store (`tools/pack_feats.py`, `mmnas/data/packed.py`), its
images are read from that one memory-mapped file instead; images missing from the store fall
back to their .npz file. `packed_feats` picks where stores are looked for: None (default) =
beside each folder (`feats/train2014.packed`), a path = `<path>/train2014.packed`, "off" = never.
"""
from __future__ import annotations

import functools
import os
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from tqdm import tqdm

from mmnas.config import LOSSES, TRAIN_SPLITS
from mmnas.data.features import (ANNOTATION_FILES, FEAT_DIM, FEATURE_DIRS, MAX_REGIONS, QUESTION_FILES,
                                  README_DATA, BadFeatureFile, DataError, check_box_count, check_raw_files,
                                  feature_index, load_npz, read_box_count, read_json)
from mmnas.data.packed import PackedFeatures, is_store, store_dir_for
from mmnas.data.vocab import MAX_TOKEN, Vocab, answer_scores, encode_question

EVAL_SPLITS = ("val", "test")
_PARTS = ("train", "val", "vg", "test")


def split_parts(split: str) -> List[str]:
    """'train+val+vg' -> ['train', 'val', 'vg']; 'test' (test2015, unannotated) stands alone."""
    parts = split.split("+")
    if not all(p in _PARTS for p in parts) or len(set(parts)) != len(parts) or ("test" in parts and len(parts) > 1):
        raise DataError(f"unknown split {split!r}; use one of {', '.join(TRAIN_SPLITS + EVAL_SPLITS)} "
                        f"(or another '+'-join of train, val, vg)")
    return parts


class VQADataset(paddle.io.Dataset):
    """Items in question-file order over the split's parts, e.g. train then val then vg."""

    def __init__(self, data_root: str, split: str, vocab: Vocab, *, preload: bool = False,
                 preload_workers: int = 8, drop_missing_images: bool = False, loss: str = "bce",
                 progress: bool = True, packed_feats: Optional[str] = None, max_regions: int = MAX_REGIONS,
                 check_feats: bool = False):
        super().__init__()
        self.max_regions = max_regions  # images with more regions are refused (features.check_box_count)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.data_root, self.split, self.vocab, self.loss, self.progress = data_root, split, vocab, loss, progress
        parts = split_parts(split)
        self.has_answers = "test" not in parts

        # 1. every raw file and feature folder exists, or one error listing all missing ones
        needed = [QUESTION_FILES[p] for p in parts]
        if self.has_answers:
            needed += [ANNOTATION_FILES[p] for p in parts]
        needed += sorted({d for p in parts for d in FEATURE_DIRS[p]})
        check_raw_files(data_root, needed)

        # 2. questions (+ annotations), and the feature file of each question's image
        self.question_ids: List[int] = []
        self.annotations: Optional[List[dict]] = [] if self.has_answers else None
        self._question_texts: List[str] = []
        image_paths: List[str] = []  # per item, deduplicated below
        missing: List[Tuple[str, int, int]] = []  # (part, question_id, image_id)
        for part in parts:
            q_path = os.path.join(data_root, "vqa", QUESTION_FILES[part])
            questions = read_json(q_path, "questions")
            index: Dict[int, str] = {}
            for folder in FEATURE_DIRS[part]:
                index.update(feature_index(os.path.join(data_root, "vqa", folder)))
            if self.has_answers:
                a_path = os.path.join(data_root, "vqa", ANNOTATION_FILES[part])
                ann_by_qid = {ann["question_id"]: ann for ann in read_json(a_path, "annotations")}
                _check_aligned(questions, ann_by_qid, q_path, a_path)
            for q in questions:
                path = index.get(q["image_id"])
                if path is None:
                    missing.append((part, q["question_id"], q["image_id"]))
                    continue
                self.question_ids.append(q["question_id"])
                self._question_texts.append(q["question"])
                image_paths.append(path)
                if self.has_answers:
                    self.annotations.append(ann_by_qid[q["question_id"]])
        if missing:
            self._report_missing(missing, len(missing) + len(self.question_ids), drop_missing_images)
        if not self.question_ids:
            raise DataError(f"split {split!r} under {data_root} has no questions left.")

        # one entry per distinct image; items point at it
        self._image_paths: List[str] = sorted(set(image_paths))
        position = {path: i for i, path in enumerate(self._image_paths)}
        self._item_image = np.array([position[p] for p in image_paths], dtype=np.int32)  # [N]
        self._image_box_counts: Optional[np.ndarray] = None  # [num_images], filled lazily
        self._preloaded: Optional[List[Tuple[np.ndarray, np.ndarray]]] = None
        self._stores: List[PackedFeatures] = []
        self._image_store = np.full(len(self._image_paths), -1, dtype=np.int32)  # store per image, -1: .npz
        self._image_row = np.zeros(len(self._image_paths), dtype=np.int64)  # image's index in its store
        self._open_packed(packed_feats)
        if check_feats:
            self.check_features(preload_workers)
        if preload:
            self._preload(preload_workers)

    def _report_missing(self, missing, total, drop):
        folders = sorted({d for part, _, _ in missing for d in FEATURE_DIRS[part]})
        where = ", ".join(os.path.join(self.data_root, "vqa", d) for d in folders)
        first = ", ".join(f"question {qid} (image {iid})" for _, qid, iid in missing[:5])
        what = (f"{len(missing)} of {total} questions of split {self.split!r} have no image feature "
                f"file in {where}; first: {first}")
        if not drop:
            raise DataError(f"{what}. Fix: add the missing .npz files (see {README_DATA}), or drop these "
                            f"questions with drop_missing_images=True (CLI flag --DROP_MISSING).")
        warnings.warn(f"{what}. Dropping them (drop_missing_images=True).", stacklevel=3)

    def _open_packed(self, packed_feats: Optional[str]):
        """Find the packed store of each feature folder in use; point packed images at it."""
        if packed_feats is not None and str(packed_feats).lower() in ("off", "none", "false", "0", ""):
            return
        by_folder: Dict[str, List[int]] = {}
        for i, path in enumerate(self._image_paths):
            by_folder.setdefault(os.path.dirname(path), []).append(i)
        for folder, images in sorted(by_folder.items()):
            store_dir = store_dir_for(folder, packed_feats)
            if not is_store(store_dir):
                continue
            try:
                store = PackedFeatures(store_dir)
            except ValueError as e:
                raise DataError(str(e)) from None
            index_time = os.stat(os.path.join(store_dir, "index.npz")).st_mtime_ns
            if os.stat(folder).st_mtime_ns > index_time:
                warnings.warn(f"{folder} changed after its packed store {store_dir} was written; images "
                              f"not in the store are read from their .npz files. Re-run tools/pack_feats.py.",
                              stacklevel=3)
            k = len(self._stores)
            self._stores.append(store)
            for i in images:
                row = store.position.get(os.path.basename(self._image_paths[i]))
                if row is not None:
                    check_box_count(self._image_paths[i], int(store.counts[row]), self.max_regions)
                    self._image_store[i], self._image_row[i] = k, row

    @property
    def packed_images(self) -> int:
        """How many of this dataset's images are read from packed stores."""
        return int((self._image_store >= 0).sum())

    def _read_image(self, image: int) -> Tuple[np.ndarray, np.ndarray]:
        store = self._image_store[image]
        if store >= 0:
            return self._stores[store].get(int(self._image_row[image]))
        return load_npz(self._image_paths[image], self.max_regions)

    def check_features(self, workers: int = 8) -> None:
        """Read and validate every .npz file this split needs, exactly as the loader will (load_npz),
        in parallel threads with a progress bar; one DataError listing the bad files. (Images in a
        packed store were validated by tools/pack_feats.py.) Fills the box counts on the way."""
        unpacked = [i for i in range(len(self._image_paths)) if self._image_store[i] < 0]
        check = functools.partial(_feature_problem, max_regions=self.max_regions)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            checked = list(tqdm(pool.map(check, [self._image_paths[i] for i in unpacked]), total=len(unpacked),
                                desc=f"check feats {self.split}", disable=not self.progress or not unpacked,
                                mininterval=1.0))
        bad = [problem for _, problem in checked if problem is not None]
        if bad:
            shown = "\n  ".join(bad[:CHECK_LISTED])
            more = f"\n  ... and {len(bad) - CHECK_LISTED} more" if len(bad) > CHECK_LISTED else ""
            folders = sorted({os.path.dirname(self._image_paths[i]) for i in unpacked})
            raise DataError(f"{len(bad)} of {len(unpacked)} feature files of split {self.split!r} cannot be used:\n"
                            f"  {shown}{more}\nFix: re-extract or re-download these files (see {README_DATA}); "
                            f"python tools/check_feats.py {' '.join(folders)} writes a full report.")
        counts = np.zeros(len(self._image_paths), dtype=np.int32)
        for i in range(len(self._image_paths)):
            if self._image_store[i] >= 0:
                counts[i] = self._stores[self._image_store[i]].counts[self._image_row[i]]
        counts[unpacked] = [n for n, _ in checked]
        self._image_box_counts = counts

    def _preload(self, workers: int):
        """Read every needed image once, in parallel threads (np.load releases the GIL on I/O).
        Packed stores are read whole, in their own dtype (float16 stores: half the memory); their
        images are then served from that copy (entries of `_preloaded` stay None)."""
        for k in sorted(set(self._image_store[self._image_store >= 0].tolist())):
            self._stores[k].load()
        unpacked = [i for i in range(len(self._image_paths)) if self._image_store[i] < 0]
        images: List[Optional[Tuple[np.ndarray, np.ndarray]]] = [None] * len(self._image_paths)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            results = pool.map(functools.partial(load_npz, max_regions=self.max_regions),
                               [self._image_paths[i] for i in unpacked])
            for i, region_feats_and_boxes in zip(unpacked, tqdm(results, total=len(unpacked), desc=f"preload {self.split}",
                                                                disable=not self.progress or not unpacked,
                                                                mininterval=1.0)):
                images[i] = region_feats_and_boxes
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on error, do not read the rest
        self._preloaded = images
        self._image_box_counts = np.array([len(images[i][0]) if images[i] is not None else
                                           int(self._stores[self._image_store[i]].counts[self._image_row[i]])
                                           for i in range(len(images))], dtype=np.int32)

    @property
    def num_images(self) -> int:
        return len(self._image_paths)

    @property
    def preloaded_bytes(self) -> int:
        """Memory held by preloaded features (0 without preload)."""
        if self._preloaded is None:
            return 0
        stores = sorted(set(self._image_store[self._image_store >= 0].tolist()))
        return (sum(f.nbytes + b.nbytes for item in self._preloaded if item is not None for f, b in [item])
                + sum(self._stores[k].nbytes for k in stores))

    @property
    def box_counts(self) -> np.ndarray:
        """int32 [N]: regions n of each item's image (reads only the .npz headers if not preloaded)."""
        if self._image_box_counts is None:
            counts = np.zeros(len(self._image_paths), dtype=np.int32)
            unpacked = []
            for i in range(len(self._image_paths)):
                if self._image_store[i] >= 0:  # from the store's index, no file read
                    counts[i] = self._stores[self._image_store[i]].counts[self._image_row[i]]
                else:
                    unpacked.append(i)
            with ThreadPoolExecutor(max_workers=8) as pool:
                read = list(tqdm(pool.map(functools.partial(read_box_count, max_regions=self.max_regions),
                                          [self._image_paths[i] for i in unpacked]),
                                 total=len(unpacked), desc="box counts", disable=not self.progress or not unpacked,
                                 mininterval=1.0))
            counts[unpacked] = np.array(read, dtype=np.int32)
            self._image_box_counts = counts
        return self._image_box_counts[self._item_image]

    def box_count(self, i: int) -> int:
        image = self._item_image[i]
        if self._image_box_counts is not None:
            return int(self._image_box_counts[image])
        if self._image_store[image] >= 0:
            return int(self._stores[self._image_store[image]].counts[self._image_row[image]])
        return read_box_count(self._image_paths[image], self.max_regions)

    def image_path(self, i: int) -> str:
        return self._image_paths[self._item_image[i]]

    def __len__(self) -> int:
        return len(self.question_ids)

    def __getitem__(self, i):
        i = int(i)
        image = self._item_image[i]
        if self._preloaded is not None and self._preloaded[image] is not None:
            region_feats, boxes = self._preloaded[image]  # shared arrays: do not modify in place
        else:
            region_feats, boxes = self._read_image(image)  # [n, 2048], [n, 4]: packed store or .npz
        question_ids = encode_question(self._question_texts[i], self.vocab.token_to_ix, MAX_TOKEN)  # [14]
        if self.has_answers:
            scores = answer_scores(self.annotations[i]["answers"], self.vocab.ans_to_ix, self.loss)  # [A]
        else:
            scores = np.zeros(self.vocab.answer_size, dtype=np.float32)
        return region_feats, boxes, question_ids, scores, np.int64(i)


CHECK_LISTED = 5  # bad feature files named in check_features' error


def _feature_problem(path: str, max_regions: int) -> Tuple[int, Optional[str]]:
    """(regions n, None) for a usable feature file, (0, "path: what is wrong") otherwise."""
    try:
        return len(load_npz(path, max_regions)[0]), None
    except BadFeatureFile as e:
        return 0, f"{path}: {e.detail}"
    except DataError as e:
        return 0, str(e)


def _check_aligned(questions: Sequence[dict], ann_by_qid: Dict[int, dict], q_path: str, a_path: str):
    """Every question has exactly one annotation and vice versa."""
    question_ids = {q["question_id"] for q in questions}
    no_ann = [qid for qid in (q["question_id"] for q in questions) if qid not in ann_by_qid]
    no_question = [qid for qid in ann_by_qid if qid not in question_ids]
    if no_ann or no_question or len(question_ids) != len(questions):
        raise DataError(
            f"{q_path} and {a_path} do not match: {len(no_ann)} question(s) without annotation "
            f"(first ids {no_ann[:5]}), {len(no_question)} annotation(s) without question "
            f"(first ids {no_question[:5]}), {len(questions) - len(question_ids)} repeated question id(s). "
            f"Use the question and annotation files of the same release ({README_DATA}).")


def collate_batch(items):
    """Stack items, zero-padding regions to this batch's largest n (the model masks zero rows).

    Returns numpy arrays: region_feats [B, Nmax, 2048] float32, boxes [B, Nmax, 4] float32,
    question_ids [B, 14] int64, answer_scores [B, A] float32, index [B] int64.
    """
    batch_size = len(items)
    n_max = max(len(item[0]) for item in items)
    region_feats = np.zeros((batch_size, n_max, FEAT_DIM), dtype=np.float32)
    boxes = np.zeros((batch_size, n_max, 4), dtype=np.float32)
    for b, (feats, bx, _, _, _) in enumerate(items):
        region_feats[b, :len(feats)] = feats
        boxes[b, :len(bx)] = bx
    question_ids = np.stack([item[2] for item in items]).astype(np.int64)
    scores = np.stack([item[3] for item in items]).astype(np.float32)
    index = np.array([item[4] for item in items], dtype=np.int64)
    return region_feats, boxes, question_ids, scores, index


# ----------------------------------------------------------------------------- loading errors
# paddle.io.DataLoader does not carry an exception raised while reading a batch back to the
# training loop: without workers the reader thread dies and the loop waits forever; with workers
# the loop gets "SystemError: Blocking queue is killed" and the message is lost in a worker's
# traceback. So an error is caught where the batch is read and travels as an ordinary batch:
# a 1-tuple (uint8 [len] message) instead of the 5 arrays of collate_batch; FailureCheckedLoader
# turns it back into the exception in the training process and shuts the workers down.

_DATA_FAILURE, _OTHER_FAILURE = 1, 2  # first byte of a failure batch: a DataError, anything else


class LoadFailure:
    """Stands in for an item whose reading raised: `kind` (_DATA_FAILURE/_OTHER_FAILURE), `message`."""

    def __init__(self, kind: int, message: str):
        self.kind, self.message = kind, message


class FailureReportingDataset(paddle.io.Dataset):
    """`dataset`'s items, or a LoadFailure for an item whose reading raised."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except DataError as e:
            return LoadFailure(_DATA_FAILURE, str(e))
        except Exception:  # a bug or an unexpected I/O error: keep the traceback, name the file
            where = self.dataset.image_path(int(i)) if hasattr(self.dataset, "image_path") else "?"
            return LoadFailure(_OTHER_FAILURE, f"reading item {int(i)} (feature file {where}) failed:\n"
                                               f"{traceback.format_exc()}")


def collate_or_failure(items):
    """collate_batch, or a failure batch (uint8 [len] message,) when an item could not be read."""
    failure = next((item for item in items if isinstance(item, LoadFailure)), None)
    if failure is None:
        try:
            return collate_batch(items)
        except Exception:
            failure = LoadFailure(_OTHER_FAILURE, f"collating a batch failed:\n{traceback.format_exc()}")
    payload = bytes([failure.kind]) + failure.message.encode("utf-8", "replace")
    return (np.frombuffer(payload, dtype=np.uint8).copy(),)


def raise_if_failure(batch) -> None:
    """Raise the error a failure batch carries (DataError for bad data, RuntimeError otherwise)."""
    if len(batch) != 1:
        return
    payload = bytes(np.asarray(batch[0].numpy() if hasattr(batch[0], "numpy") else batch[0], dtype=np.uint8))
    message = payload[1:].decode("utf-8", "replace")
    if payload[0] == _DATA_FAILURE:
        raise DataError(f"{message.rstrip('.')}; --CHECK_FEATS=True finds every bad feature file "
                        f"before the first batch.")
    raise RuntimeError(f"a data loader worker failed: {message}")


class FailureCheckedLoader:
    """Iterates a DataLoader over FailureReportingDataset / collate_or_failure, raising a read
    error in this process, and shutting the loader's thread and worker processes down on the
    way out (on an error, and when the caller stops early)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return self._checked(iter(self.loader))  # paddle's iterator starts prefetching now, as before

    @staticmethod
    def _checked(iterator):
        try:
            for batch in iterator:
                raise_if_failure(batch)
                yield batch
        finally:
            shutdown = getattr(iterator, "_try_shutdown_all", None)  # paddle's own clean-up
            if shutdown is not None:
                shutdown()
