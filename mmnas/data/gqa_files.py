"""GQA files on disk (the layout of the openvqa release) and its vocabularies.

Layout under `<data_root>/gqa/` (docs/data.md, section "GQA"):

    raw/questions1.2/{train,val,testdev}_balanced_questions.json   # {question id: question}
    raw/questions1.2/submission_all_questions.json                 # the test server's questions
    raw/eval/val_choices.json                                      # optional: validity, plausibility
    feats/gqa-frcn/<imageId>.npz     # x [n, 2048] (rows are regions), bbox [n, 4], width, height

Vocabularies follow openvqa's GQA loader: tokens (VQA-v2's tokenisation) over the train, val,
testdev and test questions in that order, questions kept whole (max_token = the longest
question, which mmnas/data/datasets.py checks against model.max_token); answers, normalised like VQA-v2's, over train, val and testdev in order of first
appearance, every one kept.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from mmnas.data.features import DataError
from mmnas.data.vocab import _prep_ans_cached, build_token_vocab, cached_vocab, tokenize

README_GQA = 'docs/data.md, section "GQA"'

QUESTION_FILES = {
    "train": "raw/questions1.2/train_balanced_questions.json",
    "val": "raw/questions1.2/val_balanced_questions.json",
    "testdev": "raw/questions1.2/testdev_balanced_questions.json",
    "test": "raw/questions1.2/submission_all_questions.json",
}
CHOICES_FILES = {"val": "raw/eval/val_choices.json"}
FEATURE_DIR = "feats/gqa-frcn"
TOKEN_PARTS = ("train", "val", "testdev", "test")
ANSWER_PARTS = ("train", "val", "testdev")
ANSWERED_PARTS = ("train", "val", "testdev")  # parts whose questions carry an answer
_CACHE_FORMAT = 1


def gqa_path(data_root: str, relative: str) -> str:
    return os.path.join(data_root, "gqa", relative)


def read_questions(path: str, need_answer: bool, scored: bool = False) -> Dict[str, dict]:
    """One GQA questions file: {question id (str): question}, every entry checked for the
    fields the loader reads, and with `scored` (an evaluation split) for those the metric reads
    (scoring_problem), so that a damaged file stops before training, not after an epoch."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos}). "
                        f"The file is probably truncated; download it again ({README_GQA}).") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); download it again ({README_GQA}).") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check it exists and is readable.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must be one JSON object keyed by question id (found a "
                        f"{type(data).__name__}); is it a GQA questions file? See {README_GQA}.")
    fields = ("imageId", "question") + (("answer",) if need_answer else ())
    for qid, q in data.items():
        if not isinstance(q, dict) or any(not isinstance(q.get(k), str) for k in fields):
            have = {k: type(q.get(k)).__name__ for k in fields} if isinstance(q, dict) else type(q).__name__
            raise DataError(f"{path}: question {qid!r} needs the string fields {list(fields)} (has {have}); "
                            f"the file is not a GQA questions file or is damaged. See {README_GQA}.")
        problem = scoring_problem(q) if scored else None
        if problem:
            raise DataError(f"{path}: question {qid!r} {problem}, which the GQA metric reads to score the split; "
                            f"the file is damaged or not a GQA 1.2 questions file: download it again ({README_GQA}).")
    return data


def scoring_problem(question: dict) -> Optional[str]:
    """What metrics/gqa_accuracy.py cannot read in one question, or None: `isBalanced` (true or
    false: only balanced questions are scored, so a missing one would drop the question
    silently), and for a balanced question `types` {structural, semantic} (its tables),
    `groups` {global: a group or null} (the distribution score) and the `semantic` program
    [{operation, argument}] (the steps table)."""
    if not isinstance(question.get("isBalanced"), bool):
        return f"has isBalanced = {question.get('isBalanced')!r}, expected true or false"
    if not question["isBalanced"]:
        return None
    types = question.get("types")
    if not isinstance(types, dict) or not all(isinstance(types.get(k), str) for k in ("structural", "semantic")):
        return f"has types = {types!r}, expected {{structural: text, semantic: text, ...}}"
    groups = question.get("groups")
    if not isinstance(groups, dict) or "global" not in groups or not isinstance(groups["global"], (str, type(None))):
        return f"has groups = {groups!r}, expected {{global: a group name or null, ...}}"
    program = question.get("semantic")
    if not isinstance(program, list) or not all(
            isinstance(op, dict) and isinstance(op.get("operation"), str) and isinstance(op.get("argument"), str)
            for op in program):
        shown = repr(program) if len(repr(program)) <= 80 else repr(program)[:77] + "..."
        return f"has semantic = {shown}, expected a list of {{operation: text, argument: text}}"
    return None


def build_gqa_vocab(data_root: str, cache_dir: str, progress: bool = True):
    """Token and answer vocabularies of GQA (openvqa's rules), cached like VQA-v2's."""
    paths = {part: gqa_path(data_root, QUESTION_FILES[part]) for part in TOKEN_PARTS}
    missing = [paths[p] for p in ANSWER_PARTS if not os.path.exists(paths[p])]
    if missing:
        raise DataError("the GQA vocabularies need these missing file(s):\n  " + "\n  ".join(missing) +
                        f"\nSee {README_GQA} for the layout.")
    token_paths = [paths[p] for p in TOKEN_PARTS if os.path.exists(paths[p])]

    def build():
        questions = [read_questions(p, need_answer=False) for p in token_paths]
        token_to_ix = build_token_vocab((list(q.values()) for q in questions), progress=progress)
        max_token = max((len(tokenize(q["question"])) for part in questions for q in part.values()), default=1)
        ans_to_ix: Dict[str, int] = {}
        for part in ANSWER_PARTS:
            for q in read_questions(paths[part], need_answer=True).values():
                ans_to_ix.setdefault(_prep_ans_cached(q["answer"]), len(ans_to_ix))
        return token_to_ix, ans_to_ix, max_token

    return cached_vocab(cache_dir, "gqa", [_CACHE_FORMAT], token_paths + [paths[p] for p in ANSWER_PARTS], build)
