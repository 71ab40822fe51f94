"""The training loop: the published recipe, checkpoints every epoch, exact resume, data parallel.

Determinism: at the start of epoch e the data order and Paddle's RNG (dropout) are both seeded
from (seed, e). A run resumed after epoch k therefore replays epochs k+1.. exactly as an
uninterrupted run would, given the model and optimizer state saved after epoch k.

Data parallel: every process sees the same shuffled global batch and takes its own equal slice.
Paddle averages gradients over processes, so each process scales its summed loss by the world
size: the update equals one process training on the whole batch.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm

from ..config import RunConfig
from ..data import load_word_vectors
from ..data.datasets import dataset_spec
from ..models import build_model
from ..runtime import amp_context, clip_and_step, make_grad_scaler, maybe_to_static
from .checkpoint import atomic_save, load_weights, safe_load, to_numpy_state, CheckpointError
from .evaluate import evaluate, make_loader
from .logger import RunLogger
from .loss import answer_loss
from .schedule import base_learning_rate, learning_rate


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, missing checkpoint); the message says why and what to do."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2 ** 31 - 1)


def ckpt_paths(ckpt_dir: str, version: str, epoch: int):
    folder = os.path.join(ckpt_dir, f"ckpt_{version}")
    return os.path.join(folder, f"epoch{epoch}.pdparams"), os.path.join(folder, f"epoch{epoch}.pdopt")


# ---- optimizer state under structured names -----------------------------------------------
# Paddle keys optimizer state by each parameter's generated name (e.g. linear_12.w_0), which
# depends on how many layers the process built before. We store it under the structured
# parameter names instead, so a checkpoint resumes in any process.

def _match_param(key: str, generated_names):
    best = None
    for name in generated_names:
        if key.startswith(name + "_") and (best is None or len(name) > len(best)):
            best = name
    return best


def optimizer_state_to_save(optimizer, model) -> dict:
    generated = {p.name: name for name, p in model.named_parameters()}
    out = {}
    for key, value in optimizer.state_dict().items():
        owner = _match_param(key, generated)
        new_key = f"param:{generated[owner]}{key[len(owner):]}" if owner else key
        out[new_key] = value.numpy() if hasattr(value, "numpy") else value
    return out


def optimizer_state_to_load(saved: dict, model) -> dict:
    structured = {name: p.name for name, p in model.named_parameters()}
    out = {}
    for key, value in saved.items():
        if key.startswith("param:"):
            rest = key[len("param:"):]
            owner = _match_param(rest, structured)
            if owner is None:
                raise CheckpointError(f"optimizer state entry {key} names no parameter of this model")
            key = structured[owner] + rest[len(owner):]
        out[key] = paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
    return out


# ---- one epoch -----------------------------------------------------------------------------

@dataclass
class EpochStats:
    loss_sum: float
    samples: int
    seconds: float
    lr: float


def train_one_epoch(model, optimizer, dataset, cfg: RunConfig, epoch: int, steps_per_epoch: int,
                    lr_base: float, rank: int, world: int, logger: RunLogger, progress: bool,
                    scaler=None) -> EpochStats:
    """One epoch of steps; `scaler` is the fp16 loss scaler (runtime.make_grad_scaler) or None."""
    tcfg = cfg.train
    paddle.seed(epoch_seed(tcfg.seed, epoch))  # dropout masks of this epoch
    order = np.random.RandomState(epoch_seed(tcfg.seed, epoch)).permutation(len(dataset))
    global_batches = order[:steps_per_epoch * tcfg.batch_size].reshape(steps_per_epoch, tcfg.batch_size)
    per_rank = tcfg.batch_size // world
    # --TO_STATIC runs whole sub-batches: Paddle compiles a program per input shape, and one
    # compiled while gradients are being accumulated gives wrong gradients (seen with 3.3)
    box_pieces = 1 if tcfg.to_static else tcfg.box_pieces
    counts = np.asarray(dataset.box_counts) if box_pieces > 1 else None
    plans = [plan_pieces(b[rank * per_rank:(rank + 1) * per_rank], tcfg.accu, box_pieces, counts)
             for b in global_batches]  # this process's share of every global batch
    params = [p for p in model.parameters() if not p.stop_gradient]

    model.train()
    loss_sum, start, lr = 0.0, time.time(), 0.0
    # per-step losses and gradient norms stay on the device and are read every log_every steps
    # (and at the end): one host synchronisation per read instead of one per step on a GPU
    pending = []
    bar = tqdm(make_loader(dataset, [ordered for ordered, _ in plans], cfg.data.num_workers), total=steps_per_epoch,
               desc=f"epoch {epoch + 1}/{tcfg.max_epoch}", disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    for step_in_epoch, (region_feats, boxes, question_ids, answer_scores, _) in enumerate(bar):
        step = epoch * steps_per_epoch + step_in_epoch + 1  # counted from 1 over the whole run
        lr = learning_rate(step, epoch, len(dataset) / tcfg.batch_size, lr_base, tcfg.warmup_epochs,
                           tcfg.lr_decay_epochs, tcfg.lr_decay_rate)
        optimizer.set_lr(lr)
        step_loss = 0.0
        pieces = plans[step_in_epoch][1]
        for i, (lo, hi, n) in enumerate(pieces):
            # gradients are all-reduced only on the last piece's backward
            sync = model.no_sync() if (world > 1 and i < len(pieces) - 1) else contextlib.nullcontext()
            with sync:
                with amp_context(cfg):
                    logits = model(region_feats[lo:hi, :n], None, boxes[lo:hi, :n], question_ids[lo:hi])
                loss = answer_loss(logits.astype("float32"), answer_scores[lo:hi], tcfg.loss)
                scaled = loss * world
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            step_loss = step_loss + loss.detach()
        grad_norm = clip_and_step(optimizer, scaler, params, tcfg.grad_clip)
        pending.append(PendingStep(step_in_epoch, step, lr, step_loss, grad_norm))
        if len(pending) >= tcfg.log_every or step_in_epoch == steps_per_epoch - 1:
            loss_sum += _read_pending(pending, epoch, rank, per_rank, tcfg.batch_size, start, logger)
            if progress:
                bar.set_postfix(loss=f"{float(pending[-1].loss) / per_rank:.4f}", lr=f"{lr:.2e}", refresh=False)
            pending = []
    bar.close()
    return EpochStats(loss_sum, steps_per_epoch * per_rank, time.time() - start, lr)


class PendingStep(NamedTuple):
    """A step whose loss and gradient norm (device tensors) have not been read yet."""
    step_in_epoch: int
    step: int
    lr: float
    loss: object
    grad_norm: object


def sorted_pieces(box_counts, pieces: int):
    """Sort a batch by box count and cut it into `pieces` sub-batches of (nearly) equal size:
    [(sample indices, largest n in that piece)], empty pieces left out. Each piece is padded only
    to its own largest n, so a batch with n spread over 10..100 does far less padded work. The
    loss is a sum over samples and padded rows are masked, so the step's gradient is the same.
    A batch whose samples all have the same n stays whole."""
    box_counts = np.asarray(box_counts)
    if len(box_counts) and box_counts.min() == box_counts.max():
        pieces = 1  # nothing to save: every sample has the same n
    order = np.argsort(box_counts, kind="stable")
    return [(idx, int(box_counts[idx[-1]])) for idx in np.array_split(order, pieces) if len(idx)]


def plan_pieces(batch, accu: int, box_pieces: int, box_counts=None):
    """One process's batch (dataset indices) cut into ACCU sub-batches, each sorted by box count
    and cut again into box_pieces pieces (sorted_pieces). Returns the indices in the order the
    loader should deliver them and [(start, end, n)] per piece: rows [start, end) of the loaded
    batch, trimmed to n regions (None: the batch's own padding, when box_counts is None)."""
    sub = len(batch) // accu
    ordered, pieces = [], []
    for a in range(accu):
        part = np.asarray(batch[a * sub:(a + 1) * sub])
        groups = [(np.arange(len(part)), None)] if box_counts is None else sorted_pieces(box_counts[part], box_pieces)
        for idx, n in groups:
            pieces.append((len(ordered), len(ordered) + len(idx), n))
            ordered.extend(part[idx].tolist())
    return ordered, pieces


def _read_pending(pending, epoch, rank, per_rank, batch_size, start, logger) -> float:
    """Read the losses (and, for VisualDL, the gradient norms) of `pending` steps with one host
    synchronisation; stop at the first non-finite loss, naming its step. Returns their sum."""
    losses = paddle.stack([p.loss.reshape([]) for p in pending]).numpy().tolist()
    for p, value in zip(pending, losses):
        if not math.isfinite(value):
            raise TrainingError(f"non-finite loss ({value}) at epoch {epoch + 1}, step {p.step_in_epoch + 1} "
                                f"(global step {p.step}); nothing was saved for this epoch")
    if rank == 0 and logger.writer is not None:
        norms = paddle.stack([p.grad_norm.reshape([]).astype("float32") for p in pending]).numpy().tolist()
        for p, value, norm in zip(pending, losses, norms):
            logger.scalars({"train/loss": value / per_rank, "train/lr": p.lr, "train/grad_norm": norm}, p.step)
        elapsed = max(time.time() - start, 1e-9)
        logger.scalars({"train/samples_per_s": (pending[-1].step_in_epoch + 1) * batch_size / elapsed},
                       pending[-1].step)
    return float(sum(losses))


# ---- the whole run ----------------------------------------------------------------------------

def check_batch_split(cfg: RunConfig, world: int) -> None:
    bs, accu = cfg.train.batch_size, cfg.train.accu
    if bs % world:
        raise TrainingError(f"--BS={bs} must be divisible by the number of processes ({world}).")
    if (bs // world) % accu:
        raise TrainingError(f"--BS={bs} split over {world} process(es) gives {bs // world} per process, "
                            f"which is not divisible by --ACCU={accu}.")


def open_dataset(cfg: RunConfig, split: str, vocab, progress: bool):
    """The split of cfg.data.dataset (mmnas/data/datasets.py) with the run's data options."""
    return dataset_spec(cfg.data.dataset).open(cfg.data, split, vocab, cfg.train.loss, cfg.model.max_regions,
                                               progress)


def open_vocab(cfg: RunConfig, progress: bool):
    """The token and answer vocabularies of cfg.data.dataset (built once, then cached)."""
    return dataset_spec(cfg.data.dataset).build_vocab(cfg.data, progress)


def checkpoint_to_resume(cfg: RunConfig):
    """(params path, optimizer path) of --CKPT_V/--CKPT_E, both required to exist."""
    params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.ckpt_version, cfg.ckpt_epoch)
    for path in (params_path, opt_path):
        if not os.path.isfile(path):
            raise TrainingError(f"--RESUME needs {path}, which does not exist; check --CKPT_V/--CKPT_E "
                                f"(checkpoints are in {os.path.dirname(path)}).")
    return params_path, opt_path


def initial_word_vectors(cfg: RunConfig, vocab):
    """Word vectors for the embedding; None when resuming (the checkpoint overwrites it)."""
    if cfg.resume:
        return None
    dcfg = cfg.data
    return load_word_vectors(vocab.token_to_ix, dcfg.word_vectors, dcfg.spacy_model, dcfg.glove_path, dcfg.data_root)


def run_logged(body, cfg: RunConfig, rank: int, world: int, progress: Optional[bool]):
    """body(cfg, rank, world, progress, logger) after the checks --RUN=train and --RUN=search
    share: the progress bar only on rank 0, the batch split, and a run logger closed at the end."""
    progress = (rank == 0) if progress is None else (progress and rank == 0)
    check_batch_split(cfg, world)
    logger = RunLogger(cfg.results_dir, cfg.version, enabled=rank == 0)
    try:
        return body(cfg, rank, world, progress, logger)
    finally:
        logger.close()


def train(cfg: RunConfig, rank: int = 0, world: int = 1, progress: Optional[bool] = None) -> dict:
    """Train per cfg; returns a summary (last epoch, checkpoint path, val scores per epoch)."""
    return run_logged(_train, cfg, rank, world, progress)


def _train(cfg: RunConfig, rank: int, world: int, progress: bool, logger: RunLogger) -> dict:
    tcfg, dcfg = cfg.train, cfg.data
    vocab = open_vocab(cfg, progress)
    train_set = open_dataset(cfg, dcfg.split, vocab, progress)
    val_set = None
    if dcfg.split == "train" and tcfg.eval_every_epoch and rank == 0:
        val_set = open_dataset(cfg, "val", vocab, progress)
    steps_per_epoch = len(train_set) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"the {dcfg.split} split has {len(train_set)} questions, fewer than one "
                            f"batch of --BS={tcfg.batch_size}.")

    start_epoch = cfg.ckpt_epoch if cfg.resume else 0
    if cfg.resume:
        params_path, opt_path = checkpoint_to_resume(cfg)

    paddle.seed(tcfg.seed)
    model = build_model(cfg.model, vocab.token_size, vocab.answer_size, initial_word_vectors(cfg, vocab))
    lr_base = base_learning_rate(tcfg, dcfg.split)
    optimizer = paddle.optimizer.Adam(learning_rate=lr_base, beta1=tcfg.betas[0], beta2=tcfg.betas[1],
                                      epsilon=tcfg.eps, parameters=model.parameters(), use_multi_tensor=True)
    if cfg.resume:
        load_weights(model, params_path)
        saved = safe_load(opt_path)
        if saved.get("steps_per_epoch") != steps_per_epoch:
            raise TrainingError(f"{opt_path} was trained with {saved.get('steps_per_epoch')} steps per epoch, this "
                                f"run has {steps_per_epoch}: resume with the same --SPLIT and --BS, or the data "
                                f"order and LR schedule would differ from the interrupted run.")
        optimizer.set_state_dict(optimizer_state_to_load(saved["optimizer"], model))
        if rank == 0:
            print(f"resumed from {params_path} (epoch {start_epoch} done)")
    if start_epoch >= tcfg.max_epoch:
        raise TrainingError(f"--CKPT_E={start_epoch} is already >= --MAX_EPOCH={tcfg.max_epoch}; nothing to train.")

    net = maybe_to_static(model, cfg)  # --TO_STATIC; the plain model otherwise
    net = paddle.DataParallel(net) if world > 1 else net
    scaler = make_grad_scaler(cfg)  # --AMP=fp16 on a GPU; None otherwise
    if rank == 0:
        logger.config(cfg.to_dict())
        logger.text(f"train split {dcfg.split}: {len(train_set)} questions, {steps_per_epoch} steps/epoch, "
                    f"{world} process(es), vocab T={vocab.token_size} A={vocab.answer_size}")
    history = []
    last_ckpt = ckpt_paths(cfg.ckpt_dir, cfg.ckpt_version, start_epoch)[0] if cfg.resume else None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, tcfg.max_epoch):
            try:
                stats = train_one_epoch(net, optimizer, train_set, cfg, epoch, steps_per_epoch, lr_base,
                                        rank, world, logger, progress, scaler)
            except TrainingError as e:
                where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise TrainingError(f"{e}; {where}. Lower the learning rate or check the features with "
                                    f"tools/check_feats.py.") from None
            mean_loss = _all_reduce_sum(stats.loss_sum, world) / (stats.samples * world)
            if rank == 0:
                params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.version, epoch + 1)
                atomic_save(to_numpy_state(model.state_dict()), params_path)
                atomic_save({"optimizer": optimizer_state_to_save(optimizer, model), "epoch": epoch + 1,
                             "seed": tcfg.seed, "data_order": "permutation(seed, epoch) per epoch",
                             "steps_per_epoch": steps_per_epoch, "lr_base": lr_base, "lr": stats.lr,
                             "config": cfg.to_dict()}, opt_path)
                last_ckpt = params_path
                line = (f"epoch {epoch + 1}/{tcfg.max_epoch}: loss {mean_loss:.5f}, lr {stats.lr:.3e}, "
                        f"{stats.seconds:.1f}s, saved {params_path}")
                print(line)
                logger.text(line)
                logger.scalars({"epoch/loss": mean_loss, "epoch/lr": stats.lr}, epoch + 1)
                record = {"epoch": epoch + 1, "loss": mean_loss, "lr": stats.lr, "checkpoint": params_path}
                if val_set is not None:
                    result = evaluate(model, val_set, name=f"{cfg.version}_epoch{epoch + 1}",
                                      results_dir=cfg.results_dir, batch_size=tcfg.eval_batch_size,
                                      num_workers=dcfg.num_workers, save_pred=tcfg.save_pred, progress=progress)
                    line = f"epoch {epoch + 1} val: {val_set.format_scores(result.scores)}"
                    print(line)
                    logger.text(line)
                    logger.scalars({"val/overall": result.scores["overall"],
                                    **{f"val/{t}": v for t, v in result.scores["per_answer_type"].items()}},
                                   epoch + 1)
                    record["val"] = result.scores
                history.append(record)
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        if rank == 0:
            report_interrupt(cfg, "train", epoch, last_ckpt, logger)
        raise
    return {"history": history, "last_checkpoint": last_ckpt, "version": cfg.version}


def report_interrupt(cfg: RunConfig, run: str, epoch: int, last_ckpt: Optional[str], logger: RunLogger) -> None:
    """After Ctrl-C: say that nothing partial was saved and print the command that resumes."""
    if last_ckpt:
        folder = os.path.basename(os.path.dirname(last_ckpt))[len("ckpt_"):]
        done_epoch = os.path.basename(last_ckpt)[len("epoch"):-len(".pdparams")]
        how = (f"the last complete checkpoint is {last_ckpt}. Resume with: python run.py --RUN={run} "
               f"--MODEL={cfg.config_path} --SPLIT={cfg.data.split} --RESUME=True --CKPT_V={folder} "
               f"--CKPT_E={done_epoch}")
    else:
        how = "no epoch had finished, so there is nothing to resume from"
    msg = f"{run} interrupted during epoch {epoch + 1}; nothing partial was saved; {how}"
    print("\n" + msg, file=sys.stderr)
    logger.text(msg)


def _all_reduce_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    t = paddle.to_tensor([value], dtype="float64")
    dist.all_reduce(t)
    return float(t.numpy().reshape(-1)[0])  # float() of a shape-[1] tensor fails under numpy 2
