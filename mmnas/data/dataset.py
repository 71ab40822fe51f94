"""VQA-v2 as a paddle Dataset: (region features, boxes, question ids, soft answer scores, index).

Everything that can be wrong with the data (missing files, questions without features,
broken JSON) is checked in the constructor, so a run fails in seconds, not hours in. The image
side (feature files, packed stores, preload, box counts) is the shared RegionDataset.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmnas.config import LOSSES, TRAIN_SPLITS
from mmnas.data.features import (ANNOTATION_FILES, FEAT_DIM, FEATURE_DIRS, MAX_REGIONS, QUESTION_FILES, README_DATA,
                                  DataError, check_raw_files, feature_index, read_json)
from mmnas.data.regions import RegionDataset
from mmnas.data.vocab import Vocab, answer_scores
from mmnas.metrics import evaluate as vqa_accuracy

EVAL_SPLITS = ("val", "test")
_PARTS = ("train", "val", "vg", "test")


def split_parts(split: str) -> List[str]:
    """'train+val+vg' -> ['train', 'val', 'vg']; 'test' (test2015, unannotated) stands alone."""
    parts = split.split("+")
    if not all(p in _PARTS for p in parts) or len(set(parts)) != len(parts) or ("test" in parts and len(parts) > 1):
        raise DataError(f"unknown split {split!r}; use one of {', '.join(TRAIN_SPLITS + EVAL_SPLITS)} "
                        f"(or another '+'-join of train, val, vg)")
    return parts


class VQADataset(RegionDataset):
    """Items in question-file order over the split's parts, e.g. train then val then vg."""

    def __init__(self, data_root: str, split: str, vocab: Vocab, *, preload: bool = False,
                 preload_workers: int = 8, drop_missing_images: bool = False, loss: str = "bce",
                 progress: bool = True, packed_feats: Optional[str] = None, max_regions: int = MAX_REGIONS,
                 check_feats: bool = False,
                 feat_size: int = FEAT_DIM):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.data_root, self.split, self.vocab, self.loss = data_root, split, vocab, loss
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

        self._setup_images(image_paths, split=split, progress=progress, max_regions=max_regions,
                           packed_feats=packed_feats, check_feats=check_feats, preload=preload,
                           preload_workers=preload_workers, feat_size=feat_size)

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

    def __getitem__(self, i):
        i = int(i)
        region_feats, boxes = self.region_arrays(i)  # [n, 2048], [n, 4]
        question_ids = self.encoded_question(i)  # [14]
        if self.has_answers:
            scores = answer_scores(self.annotations[i]["answers"], self.vocab.ans_to_ix, self.loss)  # [A]
        else:
            scores = np.zeros(self.vocab.answer_size, dtype=np.float32)
        return region_feats, boxes, question_ids, scores, np.int64(i)

    # ---- results: the file format and the metric of VQA-v2

    result_folder_test = "result_test"  # EvalAI files; annotated splits go to results/cache

    def result_entries(self, answers: Sequence[str]) -> List[dict]:
        """The result file's entries, one per question: [{"question_id", "answer"}] (EvalAI)."""
        return [{"question_id": int(qid), "answer": ans} for qid, ans in zip(self.question_ids, answers)]

    def score(self, entries: List[dict]) -> dict:
        """The official VQA accuracy (overall, per_answer_type, per_question_type, ...)."""
        return vqa_accuracy(self.annotations, entries)

    @staticmethod
    def format_scores(scores: dict) -> str:
        """One line for the log: overall and per answer type."""
        per_type = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(scores["per_answer_type"].items()))
        skipped = f" ({scores['n_skipped']} without answers not scored)" if scores.get("n_skipped") else ""
        return f"overall {scores['overall']:.2f} ({per_type}) on {scores['n_questions']} questions{skipped}"


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
