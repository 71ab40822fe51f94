"""What every dataset of region features shares: images read per question from .npz files or
packed stores, preloading, box counts, the pre-scan of --CHECK_FEATS, batching, and errors that
stop the run instead of hanging the loader.

A dataset (VQA-v2 in dataset.py, GQA in gqa.py) reads its own question files, then hands the
feature file of every question to `RegionDataset._setup_images`; its __getitem__ returns
(region_feats [n, feat_size], boxes [n, 4], question_ids [max_token], target [A], index) with the
image part from `region_arrays(i)`; feat_size is model.feat_size (2048 for the bottom-up features),
and a file of another width is refused by name before the first step. Features are read per image, not per question (~5
questions share an image): with preload=True each needed image is read once into memory;
otherwise each item reads its file (DataLoader workers do that in parallel).

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

from mmnas.data.features import (FEAT_DIM, README_DATA, BadFeatureFile, DataError, check_box_count,
                                  check_feature_width, feature_width_error, load_npz, read_box_count)
from mmnas.data.packed import PackedFeatures, is_store, store_dir_for
from mmnas.data.vocab import encode_question
from mmnas.progress import progress_bar
from mmnas.runtime import stop_signals_held


class RegionDataset(paddle.io.Dataset):
    """The image side of a dataset; subclasses set `regions_first` (the .npz layout of their
    release: False = x [2048, n] channels first as VQA-v2, True = x [n, 2048] as GQA) and
    `readme_section`, and call `_setup_images` from their constructor."""

    regions_first = False
    readme_section = README_DATA

    def _setup_images(self, image_paths: Sequence[str], *, split: str, progress: bool, max_regions: int,
                      packed_feats: Optional[str], check_feats: bool, preload: bool, preload_workers: int,
                      feat_size: int = FEAT_DIM):
        """image_paths: the feature file of every item, in item order (images repeat)."""
        self.split, self.progress = split, progress
        self.max_regions = max_regions  # images with more regions are refused (features.check_box_count)
        self.feat_size = feat_size  # model.feat_size: files of another width are refused (features._region_count)
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
        self._check_first_width()
        if check_feats:
            self.check_features(preload_workers)
        if preload:
            self._preload(preload_workers)

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
            if store.dim != self.feat_size:
                raise feature_width_error(store_dir, store.dim, self.feat_size)
            k = len(self._stores)
            self._stores.append(store)
            for i in images:
                row = store.position.get(os.path.basename(self._image_paths[i]))
                if row is not None:
                    check_box_count(self._image_paths[i], int(store.counts[row]), self.max_regions)
                    self._image_store[i], self._image_row[i] = k, row

    def _check_first_width(self) -> None:
        """Read the header of one feature file (not its data): a folder of features of another
        width than model.feat_size stops here, by name, not as a matmul error in the first step.
        (Every other file is checked when read, and all of them up front with check_feats.)"""
        unpacked = np.flatnonzero(self._image_store < 0)
        if len(unpacked):
            check_feature_width(self._image_paths[unpacked[0]], self.regions_first, self.feat_size)

    @property
    def packed_images(self) -> int:
        """How many of this dataset's images are read from packed stores."""
        return int((self._image_store >= 0).sum())

    def _read_image(self, image: int) -> Tuple[np.ndarray, np.ndarray]:
        store = self._image_store[image]
        if store >= 0:
            return self._stores[store].get(int(self._image_row[image]))
        return load_npz(self._image_paths[image], self.max_regions, self.regions_first, self.feat_size)

    def check_features(self, workers: int = 8) -> None:
        """Read and validate every .npz file this split needs, exactly as the loader will (load_npz),
        in parallel threads with a progress bar; one DataError listing the bad files. (Images in a
        packed store were validated by tools/pack_feats.py.) Fills the box counts on the way."""
        unpacked = [i for i in range(len(self._image_paths)) if self._image_store[i] < 0]
        check = functools.partial(_feature_problem, max_regions=self.max_regions,
                                  regions_first=self.regions_first, feat_size=self.feat_size)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            checked = list(progress_bar(pool.map(check, [self._image_paths[i] for i in unpacked]),
                                        total=len(unpacked), desc=f"check feats {self.split}",
                                        disable=not self.progress or not unpacked))
        bad = [problem for _, problem in checked if problem is not None]
        if bad:
            shown = "\n  ".join(bad[:CHECK_LISTED])
            more = f"\n  ... and {len(bad) - CHECK_LISTED} more" if len(bad) > CHECK_LISTED else ""
            folders = sorted({os.path.dirname(self._image_paths[i]) for i in unpacked})
            raise DataError(f"{len(bad)} of {len(unpacked)} feature files of split {self.split!r} cannot be used:\n"
                            f"  {shown}{more}\nFix: re-extract or re-download these files (see {self.readme_section}); "
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
            results = pool.map(functools.partial(load_npz, max_regions=self.max_regions,
                                                 regions_first=self.regions_first, feat_size=self.feat_size),
                               [self._image_paths[i] for i in unpacked])
            bar = progress_bar(results, total=len(unpacked), desc=f"preload {self.split}",
                               disable=not self.progress or not unpacked)
            for region_feats_and_boxes, i in zip(bar, unpacked):  # bar first: its last step is counted
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
                read = list(progress_bar(pool.map(functools.partial(read_box_count, max_regions=self.max_regions,
                                                                    regions_first=self.regions_first,
                                                                    feat_size=self.feat_size),
                                                  [self._image_paths[i] for i in unpacked]),
                                         total=len(unpacked), desc="box counts",
                                         disable=not self.progress or not unpacked))
            counts[unpacked] = np.array(read, dtype=np.int32)
            self._image_box_counts = counts
        return self._image_box_counts[self._item_image]

    def box_count(self, i: int) -> int:
        image = self._item_image[i]
        if self._image_box_counts is not None:
            return int(self._image_box_counts[image])
        if self._image_store[image] >= 0:
            return int(self._stores[self._image_store[image]].counts[self._image_row[image]])
        return read_box_count(self._image_paths[image], self.max_regions, self.regions_first, self.feat_size)

    def image_path(self, i: int) -> str:
        return self._image_paths[self._item_image[i]]

    def __len__(self) -> int:
        return len(self.question_ids)

    def question_text(self, i: int) -> str:
        return self._question_texts[i]

    def encoded_question(self, i: int) -> np.ndarray:
        """int64 [vocab.max_token]: item i's question as word ids (UNK for unknown words, 0-padded)."""
        return encode_question(self._question_texts[i], self.vocab.token_to_ix, self.vocab.max_token)

    def region_arrays(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(region_feats float32 [n, feat_size], boxes float32 [n, 4]) of item i's image; preloaded
        arrays are shared between items: do not modify them in place."""
        image = self._item_image[i]
        if self._preloaded is not None and self._preloaded[image] is not None:
            return self._preloaded[image]
        return self._read_image(image)  # packed store or .npz


CHECK_LISTED = 5  # bad feature files named in check_features' error


def _feature_problem(path: str, max_regions: int, regions_first: bool,
                     feat_size: int = FEAT_DIM) -> Tuple[int, Optional[str]]:
    """(regions n, None) for a usable feature file, (0, "path: what is wrong") otherwise."""
    try:
        return len(load_npz(path, max_regions, regions_first, feat_size)[0]), None
    except BadFeatureFile as e:
        return 0, f"{path}: {e.detail}"
    except DataError as e:
        return 0, str(e)


def collate_batch(items):
    """Stack items, zero-padding regions to this batch's largest n (the model masks zero rows).

    Returns numpy arrays: region_feats [B, Nmax, feat_size] float32, boxes [B, Nmax, 4] float32,
    question_ids [B, max_token] int64, answer_scores [B, A] float32, index [B] int64.
    """
    batch_size = len(items)
    n_max = max(len(item[0]) for item in items)
    region_feats = np.zeros((batch_size, n_max, items[0][0].shape[1]), dtype=np.float32)
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


def collate_or_failure(items, collate=collate_batch):
    """collate(items) (a dataset's own `collate`, default collate_batch), or a failure batch
    (uint8 [len] message,) when an item could not be read."""
    failure = next((item for item in items if isinstance(item, LoadFailure)), None)
    if failure is None:
        try:
            return collate(items)
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


def die_with_parent(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: the worker ends when the process that started it dies, even
    by SIGKILL or abort (a data-parallel peer stopped by spawn's SIGTERM never cleans up its
    workers, which then wait forever on their index queue). Linux only; elsewhere a no-op."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


class FailureCheckedLoader:
    """Iterates a DataLoader over FailureReportingDataset / collate_or_failure, raising a read
    error in this process, and shutting the loader's thread and worker processes down on the
    way out (on an error, and when the caller stops early)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with stop_signals_held():  # a worker ignores them (its worker_init_fn) and leaves them to this process
            iterator = iter(self.loader)  # paddle's iterator starts its workers and prefetching now
        return self._checked(iterator)

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
