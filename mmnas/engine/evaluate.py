"""Batched prediction and evaluation: the one evaluator behind --RUN=val, --RUN=test and the
validation after every training epoch.

Questions are ordered by their image's box count before batching, so each batch pads to a
similar n; logits are written back to dataset order, so answers do not depend on the order.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import paddle

from ..data import DataError
from ..data.regions import FailureCheckedLoader, FailureReportingDataset, collate_or_failure, die_with_parent
from ..inference import build_predictor
from ..progress import progress_bar
from ..checkpoint_files import write_error


class IndexBatches(paddle.io.BatchSampler):
    """A fixed list of index batches (paddle's DataLoader wants a BatchSampler instance)."""

    def __init__(self, batches: List[List[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def init_loader_worker(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which stops them (no traceback per
    worker), and end when that process dies (regions.die_with_parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(worker_id)


def make_loader(dataset, batches: List[List[int]], num_workers: int):
    """Batches of `dataset` (collate_batch arrays) in the order of `batches`; an error while
    reading one stops the iteration with that error, with or without worker processes."""
    loader = paddle.io.DataLoader(FailureReportingDataset(dataset), batch_sampler=IndexBatches(batches),
                                  collate_fn=collate_or_failure, num_workers=num_workers,
                                  use_shared_memory=num_workers > 0,
                                  worker_init_fn=init_loader_worker if num_workers > 0 else None)
    return FailureCheckedLoader(loader)


def predict(model, dataset, batch_size: int, num_workers: int = 0, progress: bool = True,
            desc: str = "eval", engine: str = "dygraph", precision: str = "fp32",
            cache_dir: Optional[str] = None) -> np.ndarray:
    """Logits [len(dataset), A] in dataset order, the model in eval mode (restored after).
    `engine` / `precision`: what runs the network (inference.build_predictor; --ENGINE, --PRECISION);
    for auto, the engines are timed on the middle batch and the choice is kept in `cache_dir`."""
    order = np.argsort(dataset.box_counts, kind="stable")
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    logits = np.zeros((len(dataset), dataset.vocab.answer_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        sample = None
        if engine == "auto" and batches:  # a batch of median box count: what most batches cost
            sample = next(iter(make_loader(dataset, [batches[len(batches) // 2]], 0)))[:3]
        run = build_predictor(model, engine, precision, gpu=not paddle.device.get_device().startswith("cpu"),
                              sample=sample, batches=len(batches), cache_dir=cache_dir)
        for region_feats, boxes, question_ids, _, index in progress_bar(
                make_loader(dataset, batches, num_workers), total=len(batches), desc=desc,
                disable=not progress, mininterval=1.0, dynamic_ncols=True):
            logits[index.numpy()] = run(region_feats, boxes, question_ids)
    finally:
        if was_training:
            model.train()
    return logits


def answers_from_logits(logits: np.ndarray, ix_to_ans: Dict[int, str]) -> List[str]:
    return [ix_to_ans[int(ix)] for ix in logits.argmax(axis=1)]


@dataclass
class EvalResult:
    scores: Optional[dict]  # None when the split has no annotations (test)
    result_path: str
    pred_path: Optional[str] = None


def write_json_atomic(obj, path: str) -> None:
    """Write JSON through a temporary of this process; an OSError (disk full, read-only folder)
    becomes a WriteError naming `path`, with the temporary removed."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise write_error(path, e, "--RESULTS_DIR") from None


def evaluate(model, dataset, *, name: str, results_dir: str, batch_size: int, num_workers: int = 0,
             save_pred: bool = False, progress: bool = True, engine: str = "dygraph",
             precision: str = "fp32") -> EvalResult:
    """Predict every question of `dataset`, write the result file, score it when annotated.

    Annotated splits write `results/cache/result_run_<name>.json`; the test split writes
    `results/result_test/result_run_<name>.json`, ready for the test server (EvalAI for VQA-v2).
    The entries and the metric are the dataset's (`result_entries`, `score`). With save_pred,
    the raw logits and question ids go to `results/pred/result_run_<name>.npz`.
    """
    logits = predict(model, dataset, batch_size, num_workers, progress, engine=engine, precision=precision,
                     cache_dir=os.path.join(results_dir, "cache"))
    answers = answers_from_logits(logits, dataset.vocab.ix_to_ans)
    results = dataset.result_entries(answers)  # the dataset's result-file format
    folder = "cache" if dataset.has_answers else dataset.result_folder_test
    result_path = os.path.join(results_dir, folder, f"result_run_{name}.json")
    write_json_atomic(results, result_path)
    pred_path = None
    if save_pred:
        pred_path = os.path.join(results_dir, "pred", f"result_run_{name}.npz")
        try:
            os.makedirs(os.path.dirname(pred_path), exist_ok=True)
            np.savez(pred_path, question_ids=np.asarray(dataset.question_ids), logits=logits)
        except OSError as e:
            raise write_error(pred_path, e, "--RESULTS_DIR") from None
    scores = None
    if dataset.has_answers:
        try:
            scores = dataset.score(results)  # the dataset's official metric
        except ValueError as e:  # e.g. no annotation of the split has answers to score against
            raise DataError(f"cannot score {result_path} (written): {e}; check the annotation file(s) of "
                            f"split {dataset.split!r} under {dataset.data_root}.") from None
    return EvalResult(scores, result_path, pred_path)
