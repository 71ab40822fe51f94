"""The interface of a task: what differs between answering, grounding and matching over the
one backbone (models/mmnasnet.py MMNasBase). The engine (train, search, evaluate), the search
strategies and the inference engines call a Task and never ask which one runs.

A loaded batch travels as a tuple of arrays (what paddle's DataLoader and the failure
reporting of data/regions.py carry): region_feats, boxes, token_ids, then the task's targets in
`Task.targets` order, then the dataset index. `as_batch` names them (MMF-style dict batches);
`piece` cuts rows [lo, hi) and trims regions to n, the per-region targets with them.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

INPUTS = ("region_feats", "boxes", "token_ids")


class Task:
    name = ""
    targets: Tuple[str, ...] = ()  # what the dataset's items carry after the inputs
    region_targets: Tuple[str, ...] = ()  # the targets with one row per region (trimmed with them)
    exportable = True  # the model has one output that Paddle Inference / ONNX export can run
    sample_noun = "samples"  # what one item of a split is, for messages
    result_noun = "results"  # what one entry of the result file is, for messages
    pred_noun = "outputs"  # what --SAVE_PRED keeps
    loss_reduction = "sum"  # "sum" over the samples, or "mean" (see `summed`)
    watches_attention = False  # training draws the attention pictures of a few val samples

    def vocab_text(self, vocab) -> str:
        """The vocabulary sizes for the log."""
        return f"T={vocab.token_size}"

    # ---- batches
    def fields(self) -> Tuple[str, ...]:
        return INPUTS + self.targets + ("index",)

    def as_batch(self, loaded) -> Dict[str, object]:
        """A loaded batch as a dict of its named fields: a dict as it is (datasets of dict items),
        a tuple named in order (a shorter tuple, no index or inputs only, names what it has)."""
        if isinstance(loaded, Mapping):
            return dict(loaded)
        return dict(zip(self.fields(), loaded))

    def piece(self, batch: Dict[str, object], lo: int, hi: int, n: Optional[int] = None) -> Dict[str, object]:
        """Rows [lo, hi) of every field; regions (and per-region targets) cut to the first n."""
        regional = {"region_feats", "boxes", *self.region_targets}
        return {k: (v[lo:hi, :n] if k in regional and n is not None else v[lo:hi]) for k, v in batch.items()}

    # ---- the model
    def build_model(self, cfg, vocab, word_vectors=None):
        raise NotImplementedError

    def build_supernet(self, cfg, search, vocab, word_vectors=None):
        raise NotImplementedError

    def forward(self, net, batch):
        """The network's outputs on a batch (dict)."""
        return net(batch["region_feats"], None, batch["boxes"], batch["token_ids"])

    def loss(self, outputs, batch, run_cfg) -> Dict[str, object]:
        """{"loss": the loss over the batch (a scalar tensor, reduced per `loss_reduction`), its
        parts...}; the backward runs on "loss"."""
        raise NotImplementedError

    def backward_scale(self, world: int, parts: int):
        """What "loss" is multiplied by before backward, so that a step's gradient is that of the
        whole global batch: a summed loss times the world size (DataParallel averages the
        processes' gradients); a mean loss divided by the sub-batches (ACCU) it is computed in,
        the processes' average being the mean already."""
        return world if self.loss_reduction == "sum" else 1.0 / parts

    def summed(self, loss, batch):
        """A loss value as a sum over the batch's samples, what the logs divide by the sample
        count (a "mean" task's loss times the batch size)."""
        return loss if self.loss_reduction == "sum" else loss * batch["token_ids"].shape[0]

    # ---- the run
    def before_epoch(self, model, train_set, run_cfg, epoch: int, rank: int = 0, world: int = 1,
                    progress: bool = True) -> None:
        """Called on every process before each training or search epoch (0-based `epoch`), after
        a resume too: what the task's training data needs from the current model (matching:
        hard negatives mined with it). Default: nothing."""

    # ---- evaluation
    splits_evaluation = False  # predict_split shares the work among data-parallel processes

    def predict_split(self, model, dataset, run_cfg, batch_size: int, progress: bool = True, rank: int = 0,
                      world: int = 1) -> Optional[Dict[str, np.ndarray]]:
        """The outputs of a task whose evaluation is not one output per sample (matching: the
        score matrix of every (image, caption) pair), for `result_entries`; None (the default):
        the engine predicts sample by sample (`predict_outputs`). With `splits_evaluation`, every
        one of `world` processes calls it and each gets the whole outputs."""
        return None

    def predict_outputs(self, outputs, batch) -> Dict[str, np.ndarray]:
        """What evaluation keeps of each sample (numpy, one row per sample), from the network's
        outputs (numpy) on a batch."""
        raise NotImplementedError

    def result_file(self, name: str, dataset) -> str:
        return f"result_run_{name}_{dataset.split}.json"  # the split: val and testdev of one checkpoint apart

    def result_entries(self, dataset, outputs: Dict[str, np.ndarray]):
        raise NotImplementedError

    def score(self, dataset, results) -> dict:
        """The metric: a dict with "overall" (percent) and anything else the task reports."""
        return dataset.score(results)

    def format_scores(self, dataset, scores: dict) -> str:
        return dataset.format_scores(scores)

    def scalars(self, scores: dict) -> Dict[str, float]:
        """The scores as VisualDL scalars, by name (the engine puts them in its val section)."""
        return {"overall": scores["overall"]}

    def search_score(self, outputs, batch) -> float:
        """Summed over the batch: the quick quality proxy a search reports for its top path."""
        raise NotImplementedError

    # ---- cost
    def head_flops(self, cfg, dataset_name: str, n: int, tokens: int) -> float:
        """Forward FLOPs of the head for one sample with n regions and `tokens` tokens."""
        raise NotImplementedError
