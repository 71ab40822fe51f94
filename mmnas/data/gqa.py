"""GQA as a paddle Dataset: (region features, boxes, question ids, one-hot answer, index).

The files and vocabularies are in gqa_files.py, the metric in metrics/gqa_accuracy.py; the image
side (feature files, packed stores, preload, box counts) is the shared RegionDataset, with GQA's
regions-first layout. Splits: train, val, testdev (answered; any '+'-join for training) and
test = submission_all (unanswered: the questions the test server wants answered).
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmnas.config import EVAL_SPLITS, MAX_REGIONS
from mmnas.data.features import FEAT_DIM, DataError
from mmnas.data.gqa_files import (ANSWERED_PARTS, CHOICES_FILES, FEATURE_DIR, QUESTION_FILES, README_GQA,
                                  gqa_path, read_questions)
from mmnas.data.regions import RegionDataset
from mmnas.data.vocab import Vocab, _prep_ans_cached
from mmnas.metrics.gqa_accuracy import evaluate as gqa_accuracy
from mmnas.metrics.gqa_accuracy import format_scores as format_gqa_scores

PARTS = ("train", "val", "testdev", "test")


def split_parts(split: str) -> List[str]:
    """'train+val' -> ['train', 'val']; 'test' (submission_all, unanswered) stands alone."""
    parts = split.split("+")
    if not all(p in PARTS for p in parts) or len(set(parts)) != len(parts) or ("test" in parts and len(parts) > 1):
        raise DataError(f"unknown GQA split {split!r}; use train, train+val, val, testdev or test")
    return parts


class GQADataset(RegionDataset):
    """Items in question-file order over the split's parts."""

    regions_first = True
    readme_section = README_GQA

    def __init__(self, data_root: str, split: str, vocab: Vocab, *, preload: bool = False,
                 preload_workers: int = 8, drop_missing_images: bool = False, progress: bool = True,
                 packed_feats: Optional[str] = None, max_regions: int = MAX_REGIONS, check_feats: bool = False,
                 feat_size: int = FEAT_DIM):
        super().__init__()
        self.data_root, self.vocab = data_root, vocab
        parts = split_parts(split)
        self.has_answers = all(p in ANSWERED_PARTS for p in parts)
        paths = [gqa_path(data_root, QUESTION_FILES[p]) for p in parts] + [gqa_path(data_root, FEATURE_DIR)]
        absent = [p for p in paths if not os.path.exists(p)]
        if absent:
            raise DataError(f"{len(absent)} GQA file(s)/folder(s) missing:\n  " + "\n  ".join(absent) +
                            f"\nSee {README_GQA} for the layout (or point --DATA_ROOT at the folder holding gqa/).")

        feat_dir = gqa_path(data_root, FEATURE_DIR)
        available = {name[:-len(".npz")] for name in os.listdir(feat_dir) if name.endswith(".npz")}
        self.questions: Dict[str, dict] = {}  # question id -> the file's entry (the metric reads it)
        self.question_ids: List[str] = []
        self._question_texts: List[str] = []
        self._answer_ix: List[int] = []
        image_paths, missing = [], []
        scored = len(parts) == 1 and parts[0] in EVAL_SPLITS["gqa"]  # what --RUN=val and each epoch's val score
        for part in parts:
            path = gqa_path(data_root, QUESTION_FILES[part])
            for qid, q in read_questions(path, self.has_answers, scored=scored).items():
                if q["imageId"] not in available:
                    missing.append((qid, q["imageId"]))
                    continue
                self.questions[qid] = q
                self.question_ids.append(qid)
                self._question_texts.append(q["question"])
                image_paths.append(os.path.join(feat_dir, q["imageId"] + ".npz"))
                if self.has_answers:
                    # answers outside the vocabulary (possible only with a foreign vocabulary) train
                    # nothing: their target row stays zero
                    self._answer_ix.append(vocab.ans_to_ix.get(_prep_ans_cached(q["answer"]), -1))
        if missing:
            what = (f"{len(missing)} of {len(missing) + len(self.question_ids)} questions of GQA split {split!r} "
                    f"have no feature file in {feat_dir}; first: " +
                    ", ".join(f"question {qid} (image {iid})" for qid, iid in missing[:5]))
            if not drop_missing_images:
                raise DataError(f"{what}. Fix: add the missing <imageId>.npz files (see {README_GQA}), or drop "
                                f"these questions with --DROP_MISSING=True.")
            warnings.warn(f"{what}. Dropping them (drop_missing_images=True).", stacklevel=2)
        if not self.question_ids:
            raise DataError(f"GQA split {split!r} under {data_root} has no questions left.")
        self.choices = self._read_choices(parts)
        self._setup_images(image_paths, split=split, progress=progress, max_regions=max_regions,
                           packed_feats=packed_feats, check_feats=check_feats, preload=preload,
                           preload_workers=preload_workers, feat_size=feat_size)

    def _read_choices(self, parts: Sequence[str]) -> Optional[dict]:
        """The choices file of an evaluation split (validity, plausibility), when it is there."""
        if len(parts) != 1 or parts[0] not in CHOICES_FILES:
            return None
        path = gqa_path(self.data_root, CHOICES_FILES[parts[0]])
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "r", encoding="utf-8") as f:
                choices = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"GQA choices file {path} cannot be read ({e}); fix or remove it "
                            f"(it only adds validity and plausibility to the scores).") from None
        if not isinstance(choices, dict):
            raise DataError(f"GQA choices file {path} must be an object {{question id: {{valid, plausible}}}}.")
        return choices

    def __getitem__(self, i):
        i = int(i)
        region_feats, boxes = self.region_arrays(i)  # [n, 2048], [n, 4]
        question_ids = self.encoded_question(i)  # [max_token]
        target = np.zeros(self.vocab.answer_size, dtype=np.float32)  # [A]: one-hot of the answer
        if self.has_answers and self._answer_ix[i] >= 0:
            target[self._answer_ix[i]] = 1.0
        return region_feats, boxes, question_ids, target, np.int64(i)

    # ---- results: the submission format and the official GQA metric

    result_folder_test = "result_test"

    def result_entries(self, answers: Sequence[str]) -> List[dict]:
        """[{"questionId", "prediction"}] over every question of the split (the submission format)."""
        return [{"questionId": qid, "prediction": ans} for qid, ans in zip(self.question_ids, answers)]

    def score(self, entries: List[dict]) -> dict:
        """Accuracy, binary/open (as per_answer_type), per type, length, steps, distribution, and
        validity/plausibility when the split has a choices file."""
        return gqa_accuracy(self.questions, entries, choices=self.choices)

    format_scores = staticmethod(format_gqa_scores)
