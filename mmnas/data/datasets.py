"""The datasets behind one interface: what training, evaluation and search ask of a dataset.

An entry of DATASETS (`data.dataset` in the config, `--DATASET` on the command line) gives
- build_vocab(data_config, progress) -> Vocab: token and answer vocabularies, cached;
- open(data_config, split, vocab, loss, max_regions, progress) -> a RegionDataset whose items are
  (region_feats [n, 2048], boxes [n, 4], question_ids [max_token], target [A], index), which
  knows `question_ids`, `has_answers`, `box_counts`, turns answers into result-file entries
  (`result_entries`), scores them (`score` -> a dict with "overall" and "per_answer_type")
  and formats them as one line for the log (`format_scores`).
The splits each dataset accepts are plain data in config.py (TRAIN_PARTS, EVAL_SPLITS); the test
split is always "test".
Adding a third dataset: its files/vocabulary module, a RegionDataset subclass (see gqa.py), its
metric under mmnas/metrics/, an entry here, a name in config.DATASETS and configs/<name>/.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mmnas.config import DataConfig
from mmnas.data.vocab import Vocab, build_vocab


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build_vocab: Callable[[DataConfig, bool], Vocab]
    open: Callable


def _vqa_vocab(dcfg: DataConfig, progress: bool) -> Vocab:
    return build_vocab(dcfg.data_root, dcfg.cache_dir, dcfg.answer_dict, progress=progress)


def _vqa_open(dcfg: DataConfig, split: str, vocab: Vocab, loss: str, max_regions: int, progress: bool):
    from mmnas.data.dataset import VQADataset  # imports paddle
    return VQADataset(dcfg.data_root, split, vocab, preload=dcfg.preload,
                      drop_missing_images=dcfg.drop_missing_images, loss=loss, progress=progress, packed_feats=dcfg.packed_feats, max_regions=max_regions,
                      check_feats=dcfg.check_feats)


def _gqa_vocab(dcfg: DataConfig, progress: bool) -> Vocab:
    from mmnas.data.gqa_files import build_gqa_vocab
    return build_gqa_vocab(dcfg.data_root, dcfg.cache_dir, progress=progress)


def _gqa_open(dcfg: DataConfig, split: str, vocab: Vocab, loss: str, max_regions: int, progress: bool):
    from mmnas.data.gqa import GQADataset  # imports paddle
    return GQADataset(dcfg.data_root, split, vocab, preload=dcfg.preload,
                      drop_missing_images=dcfg.drop_missing_images, progress=progress, packed_feats=dcfg.packed_feats, max_regions=max_regions,
                      check_feats=dcfg.check_feats)


DATASETS = {
    "vqa": DatasetSpec("vqa", _vqa_vocab, _vqa_open),
    "gqa": DatasetSpec("gqa", _gqa_vocab, _gqa_open),
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[name]  # config validation has already refused unknown names
