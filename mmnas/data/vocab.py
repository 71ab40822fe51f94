"""Question tokens and the answer dictionary, built exactly as openvqa builds them.

The released weights fix both vocabularies: the word embedding rows follow the token ids and
the output layer follows the answer ids. So the token vocabulary is always built over the
questions of train, val, test and vg (in that order, whatever split is trained), and the
answers over the train then val annotations, keeping those seen more than 8 times.
Both are cached as JSON, keyed by the input files, because building them reads ~1 GB of JSON.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from mmnas.checkpoint_files import write_json_atomic
from mmnas.config import LOSSES, MAX_TOKEN_LIMIT
from mmnas.data.features import (ANNOTATION_FILES, QUESTION_FILES, README_DATA, DataError,
                                 read_json, vqa_path)
from mmnas.metrics.normalize import prep_ans
from mmnas.progress import progress_bar

PAD, UNK, CLS = "PAD", "UNK", "CLS"
MAX_TOKEN = 14
ANSWER_MIN_COUNT = 8  # keep answers seen strictly more often than this
TOKEN_PARTS = ("train", "val", "test", "vg")  # order of first appearance for token ids
ANSWER_PARTS = ("train", "val")
_CACHE_FORMAT = 1

_DELETE = re.compile(r"[.,'!?\"()*#:;]")


def tokenize(question: str) -> List[str]:
    """'What's in the man's left-hand?' -> ['whats', 'in', 'the', 'mans', 'left', 'hand']"""
    text = _DELETE.sub("", question.lower())
    return text.replace("-", " ").replace("/", " ").split()


def build_token_vocab(question_lists: Iterable[Sequence[dict]], progress: bool = False) -> Dict[str, int]:
    """token -> id: PAD=0, UNK=1, CLS=2, then words in order of first appearance."""
    token_to_ix = {PAD: 0, UNK: 1, CLS: 2}
    for questions in question_lists:
        for q in progress_bar(questions, desc="token vocab", disable=not progress, mininterval=1.0):
            for word in tokenize(q["question"]):
                if word not in token_to_ix:
                    token_to_ix[word] = len(token_to_ix)
    return token_to_ix


def encode_question(text: str, token_to_ix: Dict[str, int], max_token: int = MAX_TOKEN) -> np.ndarray:
    """Question text -> int64 [max_token] word ids, cut or zero-padded; unknown words -> UNK."""
    ids = np.zeros(max_token, dtype=np.int64)
    unk = token_to_ix[UNK]
    for pos, word in enumerate(tokenize(text)[:max_token]):
        ids[pos] = token_to_ix.get(word, unk)
    return ids


@functools.lru_cache(maxsize=1 << 18)
def _prep_ans_cached(answer: str) -> str:
    # Human answers repeat a lot ("yes", "2", ...): normalise each distinct string once.
    return prep_ans(answer)


def build_answer_vocab(annotation_lists: Iterable[Sequence[dict]],
                       min_count: int = ANSWER_MIN_COUNT) -> Tuple[Dict[str, int], Dict[int, str]]:
    """Normalised multiple_choice_answer seen > min_count times -> id, by first appearance."""
    counts: Dict[str, int] = {}  # dicts keep insertion order = first appearance
    for part in annotation_lists:
        for ann in part:
            answer = _prep_ans_cached(ann["multiple_choice_answer"])
            counts[answer] = counts.get(answer, 0) + 1
    ans_to_ix: Dict[str, int] = {}
    for answer, count in counts.items():
        if count > min_count:
            ans_to_ix[answer] = len(ans_to_ix)
    ix_to_ans = {ix: answer for answer, ix in ans_to_ix.items()}
    return ans_to_ix, ix_to_ans


_BCE_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)  # by number of matching human answers, capped at 4


def answer_scores(answers: Sequence, ans_to_ix: Dict[str, int], loss: str = "bce") -> np.ndarray:
    """Soft target float32 [A] from the 10 human answers (dicts with 'answer', or strings).

    bce: 0,1,2,3,>=4 matches -> 0, 0.3, 0.6, 0.9, 1.0; kld: matches / 10.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    matches: Dict[str, int] = {}
    for a in answers:
        answer = _prep_ans_cached(a["answer"] if isinstance(a, dict) else a)
        matches[answer] = matches.get(answer, 0) + 1
    scores = np.zeros(len(ans_to_ix), dtype=np.float32)
    for answer, count in matches.items():
        ix = ans_to_ix.get(answer)
        if ix is not None:
            scores[ix] = count / 10.0 if loss == "kld" else _BCE_SCORES[min(count, 4)]
    return scores


@dataclass
class Vocab:
    token_to_ix: Dict[str, int]
    ans_to_ix: Dict[str, int]
    ix_to_ans: Dict[int, str]
    sources: List[str] = field(default_factory=list)  # the files the vocabularies came from
    # question ids per question: model.max_token once dataset_spec(...).build_vocab has set it (as
    # vocab.json records it for predict); the GQA builder returns the longest question, checked there
    max_token: int = MAX_TOKEN

    @property
    def token_size(self) -> int:
        return len(self.token_to_ix)

    @property
    def answer_size(self) -> int:
        return len(self.ans_to_ix)

    def to_dict(self) -> dict:
        """The JSON form: the vocabulary cache and the vocab.json written beside checkpoints."""
        return {"token_to_ix": self.token_to_ix, "ans_to_ix": self.ans_to_ix,
                "ix_to_ans": {str(ix): a for ix, a in self.ix_to_ans.items()}, "sources": self.sources,
                "max_token": self.max_token}

    @classmethod
    def from_dict(cls, raw: dict) -> "Vocab":
        """Inverse of to_dict; KeyError/ValueError/TypeError/AttributeError on a malformed dict."""
        return cls(token_to_ix={str(w): int(ix) for w, ix in raw["token_to_ix"].items()},
                   ans_to_ix={str(a): int(ix) for a, ix in raw["ans_to_ix"].items()},
                   ix_to_ans={int(ix): str(a) for ix, a in raw["ix_to_ans"].items()},
                   sources=list(raw.get("sources", [])), max_token=int(raw.get("max_token", MAX_TOKEN)))


VOCAB_FILE = "vocab.json"  # written by training beside its checkpoints (ckpt/ckpt_<VERSION>/)


def write_checkpoint_vocab(vocab: Vocab, dataset: str, path: str) -> None:
    """Training's vocab.json: the vocabulary and the dataset it was built from (`trained_dataset`)."""
    write_json_atomic({**vocab.to_dict(), "dataset": dataset}, path, "--CKPT_DIR")


def vocab_beside(weights_path: str) -> str:
    """The vocab.json training wrote beside the weights file (it may not exist: released weights)."""
    return os.path.join(os.path.dirname(os.path.abspath(weights_path)), VOCAB_FILE)


def trained_dataset(weights_path: str) -> Optional[str]:
    """The dataset named in the vocab.json beside `weights_path` (None: no such file, written before
    it named one, or unreadable; reading the vocabulary itself reports the latter)."""
    try:
        with open(vocab_beside(weights_path), "r", encoding="utf-8") as f:
            dataset = json.load(f).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return dataset if isinstance(dataset, str) else None


def read_vocab_file(path: str) -> Vocab:
    """A vocabulary JSON (Vocab.to_dict: training's vocab.json or the cache); DataError if unusable
    or inconsistent (check_vocab)."""
    fix = (f"delete it to have the vocabularies rebuilt from the data files (--DATA_ROOT), or use the "
           f"{VOCAB_FILE} that training wrote beside the checkpoint")
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise DataError(f"vocabulary file {path}: cannot read it ({e.strerror}); check the path.") from None
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"vocabulary file {path} is not valid JSON ({e}); {fix}.") from None
    try:
        vocab = Vocab.from_dict(raw)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise DataError(f"vocabulary file {path} lacks token_to_ix / ans_to_ix / ix_to_ans or holds "
                        f"non-integer ids; {fix}.") from None
    problem = vocab_problem(vocab)
    if problem:
        raise DataError(f"vocabulary file {path} is inconsistent: {problem}; {fix}.")
    return vocab


def vocab_problem(vocab: Vocab) -> Optional[str]:
    """What makes `vocab` unusable, or None: ids that are not 0..n-1 each once (an embedding row
    or an output unit would mean two things, or none), an ix_to_ans that is not the inverse of
    ans_to_ix (answers would be reported under another's name), no PAD = 0 / UNK token, or a
    max_token outside 1..MAX_TOKEN_LIMIT (it sizes every question array)."""
    for name, table in (("token_to_ix", vocab.token_to_ix), ("ans_to_ix", vocab.ans_to_ix)):
        if not table:
            if name == "ans_to_ix" and not vocab.ix_to_ans:
                continue  # a task without answers (grounding, matching) keeps no answer vocabulary
            return f"{name} is empty"
        ids = sorted(table.values())
        if ids != list(range(len(table))):
            repeated = sorted({i for i in ids if ids.count(i) > 1})[:3] if len(set(ids)) != len(ids) else []
            return (f"the ids of {name} must be 0..{len(table) - 1}, each once, but " +
                    (f"id(s) {repeated} are given to several entries" if repeated else
                     f"they run from {ids[0]} to {ids[-1]}"))
    if vocab.token_to_ix.get(PAD) != 0 or UNK not in vocab.token_to_ix:
        return f"token_to_ix must give {PAD} the id 0 and hold {UNK} (it gives {PAD} {vocab.token_to_ix.get(PAD)})"
    if len(vocab.ix_to_ans) != len(vocab.ans_to_ix):
        return f"ix_to_ans has {len(vocab.ix_to_ans)} answers but ans_to_ix has {len(vocab.ans_to_ix)}"
    for ix, answer in sorted(vocab.ix_to_ans.items()):
        if vocab.ans_to_ix.get(answer) != ix:
            return (f"ix_to_ans[{ix}] is {answer!r} but ans_to_ix[{answer!r}] is {vocab.ans_to_ix.get(answer)}; "
                    f"ix_to_ans must be the inverse of ans_to_ix")
    if not 1 <= vocab.max_token <= MAX_TOKEN_LIMIT:
        return f"max_token is {vocab.max_token}, expected 1..{MAX_TOKEN_LIMIT} words per question"
    return None


def read_answer_dict(path: str) -> Tuple[Dict[str, int], Dict[int, str]]:
    """An explicit answer dictionary: openvqa's [ans_to_ix, ix_to_ans] or {"ans_to_ix": ...}."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise DataError(f"answer dictionary {path}: cannot read it ({e.strerror}); fix data.answer_dict "
                        f"or leave it empty to build the dictionary from the annotations.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"answer dictionary {path} is not valid JSON: {e.msg} at line {e.lineno} "
                        f"column {e.colno} (char {e.pos}).") from None
    if isinstance(raw, list) and len(raw) >= 1 and isinstance(raw[0], dict):
        ans_to_ix = raw[0]
    elif isinstance(raw, dict) and isinstance(raw.get("ans_to_ix"), dict):
        ans_to_ix = raw["ans_to_ix"]
    else:
        raise DataError(f"answer dictionary {path} must be [ans_to_ix, ix_to_ans] (openvqa's "
                        f"answer_dict.json) or {{\"ans_to_ix\": {{answer: id}}}}.")
    try:
        ans_to_ix = {str(a): int(ix) for a, ix in ans_to_ix.items()}
    except (TypeError, ValueError):
        raise DataError(f"answer dictionary {path}: ids must be integers.") from None
    if sorted(ans_to_ix.values()) != list(range(len(ans_to_ix))):
        raise DataError(f"answer dictionary {path}: ids must be 0..{len(ans_to_ix) - 1}, each used once.")
    return ans_to_ix, {ix: a for a, ix in ans_to_ix.items()}


def _file_key(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def build_vocab(data_root: str, cache_dir: str, answer_dict: Optional[str] = None,
                progress: bool = True) -> Vocab:
    """Token and answer vocabularies for VQA-v2, read from cache_dir when the inputs are unchanged."""
    question_paths = {part: vqa_path(data_root, QUESTION_FILES[part]) for part in TOKEN_PARTS}
    required = [question_paths["train"], question_paths["val"]]
    if answer_dict is None:
        required += [vqa_path(data_root, ANNOTATION_FILES[part]) for part in ANSWER_PARTS]
    missing = [p for p in required if not os.path.exists(p)]
    if missing:
        raise DataError("the vocabularies need these missing file(s):\n  " + "\n  ".join(missing) +
                        f"\nSee {README_DATA} for where to get them.")
    absent = [p for part, p in question_paths.items() if not os.path.exists(p)]
    if absent:
        warnings.warn(f"question file(s) {absent} not found: the token vocabulary is built without "
                      f"them and will not match the released weights' vocabulary.", stacklevel=2)
    token_paths = [p for p in question_paths.values() if os.path.exists(p)]
    answer_paths = [answer_dict] if answer_dict else [vqa_path(data_root, ANNOTATION_FILES[p]) for p in ANSWER_PARTS]

    def build():
        token_to_ix = build_token_vocab((read_json(p, "questions") for p in token_paths), progress=progress)
        if answer_dict:
            ans_to_ix, _ = read_answer_dict(answer_dict)
        else:
            ans_to_ix, _ = build_answer_vocab(read_json(p, "annotations") for p in answer_paths)
        return token_to_ix, ans_to_ix, MAX_TOKEN

    return cached_vocab(cache_dir, "vocab", [_CACHE_FORMAT, ANSWER_MIN_COUNT, bool(answer_dict)],
                        token_paths + answer_paths, build)


def cached_vocab(cache_dir: str, prefix: str, key: list, input_paths: List[str], build) -> Vocab:
    """The vocabularies from `<cache_dir>/<prefix>_<hash>.json` when `key` and the input files
    (path, size, mtime) are unchanged, else from build() -> (token_to_ix, ans_to_ix, max_token),
    then cached. Building reads large JSON files; reading the cache takes a moment."""
    key_src = json.dumps(list(key) + [_file_key(p) for p in input_paths])
    cache_path = os.path.join(cache_dir, f"{prefix}_{hashlib.sha1(key_src.encode()).hexdigest()[:16]}.json")
    if os.path.isfile(cache_path):
        try:
            return read_vocab_file(cache_path)
        except DataError as e:
            warnings.warn(f"vocabulary cache unreadable, rebuilding it: {e}", stacklevel=2)

    token_to_ix, ans_to_ix, max_token = build()
    ix_to_ans = {ix: answer for answer, ix in ans_to_ix.items()}
    vocab = Vocab(token_to_ix, ans_to_ix, ix_to_ans, sources=[os.path.abspath(p) for p in input_paths],
                  max_token=max_token)
    write_json_atomic(vocab.to_dict(), cache_path, "data.cache_dir")  # a concurrent reader never sees half a file
    return vocab
