"""VisualDL views of a training run beyond its curves: the hyper-parameters on the hparams page,
and, after every epoch's validation, the attention picture (engine/attention_picture.py) of the
same few val questions in the image tab, so the pictures of successive epochs show the model
learning where to look.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from .logger import RunLogger, attention_tag, vdl_tag

WATCHED_QUESTIONS = 3  # val questions pictured after every epoch
# scalars shown beside the hyper-parameters (the last value of each; written by train.py)
HPARAM_METRICS = [vdl_tag("train", "epoch_loss")] + [vdl_tag("val", t) for t in ("overall", "yes/no", "number", "other")]


def hparams_of(cfg_dict: dict) -> dict:
    """The run's hyper-parameters as VisualDL wants them (str, int or float values): the config
    name, the model, data and train sections flattened to "section.key" (lists joined by
    spaces, None and booleans as words); paths and machine settings left out."""
    skip = {"data": {"data_root", "cache_dir", "glove_path", "packed_feats", "num_workers", "spacy_model"}}
    values = {"config": os.path.basename(cfg_dict.get("config_path") or "")}
    for section in ("model", "data", "train"):
        for key, value in (cfg_dict.get(section) or {}).items():
            if key in skip.get(section, ()):
                continue
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            elif value is None or isinstance(value, bool):
                value = str(value)
            values[f"{section}.{key}"] = value
    return values


def watched_questions(dataset, count: int = WATCHED_QUESTIONS) -> List[int]:
    """`count` dataset indices spread evenly over the split, on distinct images where possible:
    the same questions in every epoch (and every run on the same data)."""
    chosen, images = [], set()
    for i in np.linspace(0, len(dataset) - 1, num=max(count * 4, 1)).round().astype(int).tolist():
        if len(chosen) < count and dataset.image_path(i) not in images:
            chosen.append(i)
            images.add(dataset.image_path(i))
    return chosen


class AttentionWatch:
    """Pictures the model's attention on a few fixed val questions after every epoch."""

    def __init__(self, dataset, vocab, logger: RunLogger, dataset_name: str, count: int = WATCHED_QUESTIONS):
        self.dataset, self.vocab, self.logger, self.dataset_name = dataset, vocab, logger, dataset_name
        self.indices = watched_questions(dataset, count)

    @classmethod
    def for_run(cls, val_set, vocab, logger: RunLogger, dataset_name: str) -> Optional["AttentionWatch"]:
        """None when there is nothing to watch or nowhere to show it (no val, no VisualDL);
        dataset_name (data.dataset) names the pictures' section."""
        if val_set is None or not logger.has_vdl:
            return None
        return cls(val_set, vocab, logger, dataset_name)

    def features(self, i: int):
        """The question's image as predict reads it: its .npz (with image_w, image_h), or the
        dataset's arrays (packed store) on a canvas of the boxes' extent."""
        from .predict import read_image_features
        path = self.dataset.image_path(i)
        if os.path.isfile(path):
            return read_image_features(path, self.dataset.feat_size)
        region_feats, boxes = self.dataset[i][:2]
        return region_feats, boxes, int(np.ceil(boxes[:, 2].max())) + 1, int(np.ceil(boxes[:, 3].max())) + 1

    def log(self, model, step: int) -> None:
        """Ask every watched question with the live model (its train/eval mode is restored) and
        add each picture under the tag attention_<dataset>/q<question_id> at `step` (the epoch)."""
        from .attention_picture import attention_image, find_photo
        from .predict import Predictor
        predictor = Predictor(model, self.vocab)
        for i in self.indices:
            answer = predictor.ask(self.features(i), self.dataset.question_text(i), topk=3)
            photo = find_photo(self.dataset.image_path(i))
            self.logger.image(attention_tag(self.dataset_name, self.dataset.question_ids[i]),
                              attention_image(answer, photo), step)
