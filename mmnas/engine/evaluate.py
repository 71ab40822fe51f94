"""Batched prediction and evaluation: the one evaluator behind --RUN=val, --RUN=test and the
validation after every training epoch.

Questions are ordered by their image's box count before batching, so each batch pads to a
similar n; logits are written back to dataset order, so answers do not depend on the order.
"""
from __future__ import annotations

import functools
import os
import signal
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import paddle

from ..data import DataError
from ..data.regions import (FailureCheckedLoader, FailureReportingDataset, collate_batch, collate_or_failure,
                            die_with_parent)
from ..inference import InferenceError, build_predictor, resolve_engine
from ..inference.predictor import AUTO
from ..progress import progress_bar
from ..tasks import Task, task_named
from ..checkpoint_files import atomic_write, write_json_atomic
from ..runtime import STOP_SIGNALS, release_stop_signals


class IndexBatches(paddle.io.BatchSampler):
    """A fixed list of index batches (paddle's DataLoader wants a BatchSampler instance)."""

    def __init__(self, batches: List[List[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def init_loader_worker(worker_id: int) -> None:
    """Loader workers leave Ctrl-C, SIGTERM and SIGHUP to the main process, which stops them (no
    traceback per worker, nor Paddle's C++ one), and end when that process dies
    (regions.die_with_parent)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    release_stop_signals()  # held while the loader started this worker (FailureCheckedLoader)
    die_with_parent(worker_id)


def make_loader(dataset, batches: List[List[int]], num_workers: int):
    """Batches of `dataset` (collate_batch arrays) in the order of `batches`; an error while
    reading one stops the iteration with that error, with or without worker processes."""
    collate = getattr(dataset, "collate", collate_batch)  # a dataset of dict items brings its own
    loader = paddle.io.DataLoader(FailureReportingDataset(dataset), batch_sampler=IndexBatches(batches),
                                  collate_fn=functools.partial(collate_or_failure, collate=collate),
                                  num_workers=num_workers,
                                  use_shared_memory=num_workers > 0,
                                  worker_init_fn=init_loader_worker if num_workers > 0 else None)
    return FailureCheckedLoader(loader)


def predict_outputs(model, dataset, task: Task, batch_size: int, num_workers: int = 0, progress: bool = True,
                    desc: str = "eval", engine: str = "dygraph", precision: str = "fp32",
                    cache_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
    """What the task keeps of every sample (Task.predict_outputs; the answer task: logits
    [len(dataset), A]) in dataset order, the model in eval mode (restored after).
    `engine` / `precision`: what runs the network (inference.build_predictor; --ENGINE, --PRECISION);
    for auto, the engines are timed on the middle batch and the choice is kept in `cache_dir`."""
    order = np.argsort(dataset.box_counts, kind="stable")
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    gpu = not paddle.device.get_device().startswith("cpu")
    if not task.exportable:
        if resolve_engine(engine, precision, gpu) not in ("dygraph", AUTO):
            raise InferenceError(f"the {task.name} task's model has several outputs and runs in dygraph only; "
                                 f"use --ENGINE=dygraph (or auto) and --PRECISION=fp32.")
        engine = "dygraph"  # auto has nothing to choose between
    outputs: Dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        sample = None
        if engine == AUTO and batches:  # a batch of median box count: what most batches cost
            middle = task.as_batch(next(iter(make_loader(dataset, [batches[len(batches) // 2]], 0))))
            sample = (middle["region_feats"], middle["boxes"], middle["token_ids"])
        run = build_predictor(model, engine, precision, gpu=gpu, sample=sample, batches=len(batches),
                              cache_dir=cache_dir)
        # delay=0: the evaluation's bar shows from its first batch, the line that says it started
        for loaded in progress_bar(make_loader(dataset, batches, num_workers), total=len(batches), desc=desc,
                                   disable=not progress, mininterval=1.0, dynamic_ncols=True, delay=0):
            batch = task.as_batch(loaded)
            kept = task.predict_outputs(run(batch["region_feats"], batch["boxes"], batch["token_ids"]), batch)
            index = batch["index"].numpy()
            for key, rows in kept.items():
                if key not in outputs:
                    outputs[key] = np.zeros((len(dataset),) + rows.shape[1:], dtype=rows.dtype)
                outputs[key][index] = rows
    finally:
        if was_training:
            model.train()
    return outputs


def predict(model, dataset, batch_size: int, num_workers: int = 0, progress: bool = True,
            desc: str = "eval", engine: str = "dygraph", precision: str = "fp32") -> np.ndarray:
    """Logits [len(dataset), A] of an answer model in dataset order (predict_outputs of the answer task)."""
    return predict_outputs(model, dataset, task_named("answer"), batch_size, num_workers, progress, desc,
                           engine, precision)["logits"]


@dataclass
class EvalResult:
    scores: Optional[dict]  # None when the split has no annotations (test)
    result_path: str
    pred_path: Optional[str] = None


def evaluate(model, dataset, *, name: str, results_dir: str, batch_size: int, num_workers: int = 0,
             save_pred: bool = False, progress: bool = True, engine: str = "dygraph",
             precision: str = "fp32", task: Optional[Task] = None, run_cfg=None, rank: int = 0,
             world: int = 1) -> Optional[EvalResult]:
    """Predict every sample of `dataset`, write the result file, score it when annotated.

    Annotated splits write `results/cache/<result file>`; the test split writes
    `results/<dataset.result_folder_test>/<result file>`, ready for the test server (EvalAI for
    VQA-v2). The file's name, entries and the metric are the task's (`result_file`,
    `result_entries`, `score`; the answer task: result_run_<name>_<split>.json and the dataset's own
    format and metric). With save_pred, the kept outputs (the answer task: logits) and the
    sample ids go to `results/pred/`, named as the result file with .npz. `task`: default the answer task;
    `run_cfg`: the RunConfig, for a task that evaluates the whole split itself (Task.predict_split),
    which may share it among `world` processes (each calls evaluate; process 0 returns the result).
    """
    task = task or task_named("answer")
    outputs = task.predict_split(model, dataset, run_cfg, batch_size, progress and rank == 0, rank, world)
    if rank != 0:
        return None  # data parallel (Task.splits_evaluation): process 0 writes and scores
    if outputs is None:
        outputs = predict_outputs(model, dataset, task, batch_size, num_workers, progress, engine=engine,
                                  precision=precision, cache_dir=os.path.join(results_dir, "cache"))
    results = task.result_entries(dataset, outputs)
    folder = "cache" if dataset.has_answers else dataset.result_folder_test
    result_path = os.path.join(results_dir, folder, task.result_file(name, dataset))
    write_json_atomic(results, result_path)
    pred_path = None
    if save_pred:
        # the result file's name (run, dataset where the task names it, split) with .npz
        pred_path = os.path.join(results_dir, "pred", os.path.splitext(task.result_file(name, dataset))[0] + ".npz")
        ids = getattr(dataset, "question_ids", None)  # a split scored as a whole (matching) has none
        atomic_write(pred_path, lambda f: np.savez(f, **({} if ids is None else {"question_ids": np.asarray(ids)}),
                                                   **outputs), "--RESULTS_DIR")
    scores = None
    if dataset.has_answers:
        try:
            scores = task.score(dataset, results)  # the task's (dataset's) official metric
        except ValueError as e:  # e.g. no annotation of the split has answers to score against
            raise DataError(f"cannot score {result_path} (written): {e}; check the annotation file(s) of "
                            f"split {dataset.split!r} under {dataset.data_root}.") from None
    return EvalResult(scores, result_path, pred_path)
