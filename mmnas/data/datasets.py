"""The datasets behind one interface: what training, evaluation and search ask of a dataset.

An entry of DATASETS (`data.dataset` in the config, `--DATASET` on the command line) gives
- build_vocab(run_config, progress) -> Vocab: token and answer vocabularies, cached under
  run_config.cache_dir, cutting questions at model.max_token (Vocab.max_token);
- open(run_config, split, vocab, progress) -> a RegionDataset whose items are
  (region_feats [n, model.feat_size], boxes [n, 4], question_ids [model.max_token], target [A], index),
  which knows `question_ids`, `has_answers`, `box_counts`, turns answers into result-file entries
  (`result_entries`), scores them (`score` -> a dict with "overall" and "per_answer_type")
  and formats them as one line for the log (`format_scores`).
Both take the whole RunConfig: the data section, model.max_token / feat_size / max_regions and
train.loss all shape the items.
The splits each dataset accepts are plain data in config.py (TRAIN_PARTS, EVAL_SPLITS,
TEST_SPLITS). `task` names the dataset's task (mmnas/tasks/): what its items carry and how a
model of it is built, trained, scored and searched.
Adding a third dataset: its files/vocabulary module, a RegionDataset subclass (see gqa.py), its
metric under mmnas/metrics/, an entry here, a name in config.DATASETS and configs/<name>/.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

from mmnas.config import RunConfig
from mmnas.data.features import DataError
from mmnas.data.vocab import Vocab, build_vocab


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build_vocab: Callable[[RunConfig, bool], Vocab]
    open: Callable  # (RunConfig, split, Vocab, progress) -> RegionDataset
    task: str = "answer"  # the task its items are made for (mmnas/tasks/, TASKS)
    answers: Optional[int] = None  # answer task: the published dictionary's size (the head's FLOPs)
    # what --DATA_ROOT must hold, for the error when it does not exist
    layout: str = '{dataset}/raw and {dataset}/feats (see docs/data.md)'


def _vqa_vocab(cfg: RunConfig, progress: bool) -> Vocab:
    """VQA-v2 cuts questions (openvqa: at 14 words, the default of model.max_token)."""
    vocab = build_vocab(cfg.data.data_root, cfg.cache_dir, cfg.data.answer_dict, progress=progress)
    return dataclasses.replace(vocab, max_token=cfg.model.max_token)


def _check_question_length(vocab: Vocab, cfg: RunConfig) -> None:
    """The items' question_ids are vocab.max_token long; the model is exported with model.max_token."""
    if vocab.max_token != cfg.model.max_token:
        raise DataError(f"the vocabulary cuts questions at {vocab.max_token} words but model.max_token is "
                        f"{cfg.model.max_token}; build the vocabulary with the same config "
                        f"(dataset_spec(...).build_vocab) or set model.max_token: {vocab.max_token}.")


def _vqa_open(cfg: RunConfig, split: str, vocab: Vocab, progress: bool):
    from mmnas.data.dataset import VQADataset  # imports paddle
    _check_question_length(vocab, cfg)
    dcfg = cfg.data
    return VQADataset(dcfg.data_root, split, vocab, preload=dcfg.preload,
                      drop_missing_images=dcfg.drop_missing_images, loss=cfg.train.loss, progress=progress,
                      packed_feats=dcfg.packed_feats, max_regions=cfg.model.max_regions,
                      check_feats=dcfg.check_feats, feat_size=cfg.model.feat_size)


def _gqa_vocab(cfg: RunConfig, progress: bool) -> Vocab:
    """GQA keeps questions whole (openvqa): model.max_token must hold the longest question of the
    GQA files (29 on the balanced release, what configs/gqa/ set); shorter ones are zero-padded."""
    from mmnas.data.gqa_files import build_gqa_vocab
    vocab = build_gqa_vocab(cfg.data.data_root, cfg.cache_dir, progress=progress)  # max_token: the longest
    if vocab.max_token > cfg.model.max_token:
        raise DataError(f"the longest GQA question under {cfg.data.data_root} has {vocab.max_token} words but "
                        f"model.max_token is {cfg.model.max_token}, and GQA keeps questions whole; set "
                        f"model.max_token: {vocab.max_token} (or more) in the config.")
    return dataclasses.replace(vocab, max_token=cfg.model.max_token)


def _gqa_open(cfg: RunConfig, split: str, vocab: Vocab, progress: bool):
    from mmnas.data.gqa import GQADataset  # imports paddle
    _check_question_length(vocab, cfg)
    dcfg = cfg.data
    return GQADataset(dcfg.data_root, split, vocab, preload=dcfg.preload,
                      drop_missing_images=dcfg.drop_missing_images, progress=progress,
                      packed_feats=dcfg.packed_feats, max_regions=cfg.model.max_regions,
                      check_feats=dcfg.check_feats, feat_size=cfg.model.feat_size)


def _refcoco_vocab(cfg: RunConfig, progress: bool) -> Vocab:
    """RefCOCO/+/g: every word of every split file of the dataset (the reference's vocabulary),
    expressions cut to model.max_token ids, the last always PAD."""
    from mmnas.data.refcoco import build_refcoco_vocab
    return build_refcoco_vocab(cfg.data.data_root, cfg.data.dataset, cfg.model.max_token)


def _refcoco_open(cfg: RunConfig, split: str, vocab: Vocab, progress: bool):
    from mmnas.data.refcoco import RefCOCODataset, collate_grounding  # imports paddle
    _check_question_length(vocab, cfg)
    dcfg = cfg.data
    dataset = RefCOCODataset(dcfg.data_root, dcfg.dataset, split, vocab, preload=dcfg.preload,
                             drop_missing_images=dcfg.drop_missing_images, progress=progress,
                             packed_feats=dcfg.packed_feats, max_regions=cfg.model.max_regions,
                             check_feats=dcfg.check_feats, feat_size=cfg.model.feat_size)
    dataset.collate = collate_grounding  # dict items: the loader stacks them with their own collate
    return dataset


def _flickr_vocab(cfg: RunConfig, progress: bool) -> Vocab:
    """Flickr30K: every word of the train, dev and test caption files (the reference's
    vocabulary, so a converted checkpoint's embedding rows line up); captions cut to model.max_token."""
    from mmnas.data.flickr import SPLITS, build_caption_vocab, caps_path
    return Vocab(token_to_ix=build_caption_vocab(cfg.data.data_root), ans_to_ix={}, ix_to_ans={},
                 sources=[os.path.abspath(caps_path(cfg.data.data_root, s)) for s in SPLITS],
                 max_token=cfg.model.max_token)


FLICKR_FILES = {"train": "train", "val": "dev", "test": "test"}  # split name -> f30k_precomp file prefix


def _flickr_open(cfg: RunConfig, split: str, vocab: Vocab, progress: bool):
    """One item per caption; the train split as triplets (data/flickr_batches.py), the others as
    captions whose images the matching task scores them against (data/flickr_scoring.py)."""
    from mmnas.data.flickr import FlickrDataset  # imports paddle
    from mmnas.data.flickr_batches import TripletBatches
    _check_question_length(vocab, cfg)
    dcfg = cfg.data
    dataset = FlickrDataset(dcfg.data_root, FLICKR_FILES[split], vocab.token_to_ix, max_token=cfg.model.max_token,
                            preload=dcfg.preload, progress=progress, packed_feats=dcfg.packed_feats,
                            max_regions=cfg.model.max_regions, check_feats=dcfg.check_feats,
                            feat_size=cfg.model.feat_size)
    dataset.dataset, dataset.vocab, dataset.has_answers = "flickr30k", vocab, True  # every split is annotated
    return TripletBatches(dataset, seed=cfg.train.seed) if split == "train" else dataset


_VGD_LAYOUT = "vgd/bua-r101-fix100/ and vgd/{dataset}/ (docs/grounding.md, \"Data layout\")"
_ITM_LAYOUT = "itm/flickr_bua-r101-fix36/ and itm/f30k_precomp/ (docs/matching.md, \"Data layout\")"

DATASETS = {
    # answers: VQA-v2's dictionary keeps those seen more than 8 times in train+val (3129);
    # GQA's keeps every answer of train, val and testdev (1843)
    "vqa": DatasetSpec("vqa", _vqa_vocab, _vqa_open, "answer", 3129),
    "gqa": DatasetSpec("gqa", _gqa_vocab, _gqa_open, "answer", 1843),
    "refcoco": DatasetSpec("refcoco", _refcoco_vocab, _refcoco_open, "grounding", layout=_VGD_LAYOUT),
    "refcoco+": DatasetSpec("refcoco+", _refcoco_vocab, _refcoco_open, "grounding", layout=_VGD_LAYOUT),
    "refcocog": DatasetSpec("refcocog", _refcoco_vocab, _refcoco_open, "grounding", layout=_VGD_LAYOUT),
    "flickr30k": DatasetSpec("flickr30k", _flickr_vocab, _flickr_open, "matching", layout=_ITM_LAYOUT),
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[name]  # config validation has already refused unknown names
