"""The training loop: the published recipe, a checkpoint every epoch, exact resume, data parallel.

The epoch loop, the checkpoints and the data are shared with the search (runner.py,
checkpoint.py); this module holds what is training's own: the model and its optimizer, the
gradient step (accumulation over --ACCU sub-batches, each cut into box-count pieces) and the
validation after each epoch.

Data parallel: every process sees the same shuffled global batch and takes its own equal slice.
Paddle averages gradients over processes, so each process scales its summed loss by the world
size: the update equals one process training on the whole batch.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..config import RunConfig
from ..data.vocab import VOCAB_FILE, write_checkpoint_vocab
from ..tasks import Task, task_of
from ..runtime import amp_context, clip_and_step, make_grad_scaler, maybe_to_static
from .checkpoint import TrainingError, check_epochs_left, ckpt_paths, load_pretrained, resume_from, save_epoch
from .evaluate import evaluate
from .interrupt import RunPosition
from .logger import RunLogger, vdl_tag
from .runner import initial_word_vectors, open_dataset, open_vocab, run_epoch, run_logged, seed_epoch
from .schedule import base_learning_rate
from .watch_attention import HPARAM_METRICS, AttentionWatch, hparams_of


# ---- batches: accumulation and box-count pieces -------------------------------------------------

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


# ---- one epoch ---------------------------------------------------------------------------------

def train_one_epoch(net, optimizer, dataset, cfg: RunConfig, epoch: int, steps_per_epoch: int, lr_base: float,
                    rank: int, world: int, logger: RunLogger, progress: bool, position: RunPosition, scaler=None,
                    task: Optional[Task] = None):
    """One epoch of gradient steps (runner.run_epoch); `scaler` is the fp16 loss scaler
    (runtime.make_grad_scaler) or None; `task` gives the forward and the loss (default: the
    task of cfg.data.dataset)."""
    tcfg = cfg.train
    task = task or task_of(cfg)
    order = np.random.RandomState(seed_epoch(tcfg.seed, epoch)).permutation(len(dataset))
    global_batches = order[:steps_per_epoch * tcfg.batch_size].reshape(steps_per_epoch, tcfg.batch_size)
    per_rank = tcfg.batch_size // world
    # --TO_STATIC runs whole sub-batches: Paddle compiles a program per input shape, and one
    # compiled while gradients are being accumulated gives wrong gradients (seen with 3.3)
    # A mean loss (grounding) is the reference's over the whole batch: no box-count pieces
    box_pieces = 1 if tcfg.to_static or task.loss_reduction == "mean" else tcfg.box_pieces
    counts = np.asarray(dataset.box_counts) if box_pieces > 1 else None
    plans = [plan_pieces(b[rank * per_rank:(rank + 1) * per_rank], tcfg.accu, box_pieces, counts)
             for b in global_batches]  # this process's share of every global batch
    params = [p for p in net.parameters() if not p.stop_gradient]

    def step(step_in_epoch, loaded, lr):
        batch = task.as_batch(loaded)
        optimizer.set_lr(lr)
        step_losses = {}
        pieces = plans[step_in_epoch][1]
        for i, (lo, hi, n) in enumerate(pieces):
            # gradients are all-reduced only on the last piece's backward
            sync = net.no_sync() if (world > 1 and i < len(pieces) - 1) else contextlib.nullcontext()
            part = task.piece(batch, lo, hi, n)
            with sync:
                with amp_context(cfg):
                    outputs = task.forward(net, part)
                losses = task.loss(outputs, part, cfg)  # {"loss": summed, its parts...}
                scaled = losses["loss"] * task.backward_scale(world, tcfg.accu)
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            for name, value in losses.items():
                step_losses[name] = step_losses.get(name, 0.0) + task.summed(value.detach(), part)
        # per-step losses and gradient norms stay on the device until the runner reads them
        return {**step_losses, "grad_norm": clip_and_step(optimizer, scaler, params, tcfg.grad_clip)}

    net.train()
    return run_epoch(cfg, epoch, [ordered for ordered, _ in plans], dataset, step, len(dataset), lr_base, rank,
                     world, logger, progress, position, tag="train")


# ---- the whole run ----------------------------------------------------------------------------

def train(cfg: RunConfig, rank: int = 0, world: int = 1, progress: Optional[bool] = None) -> dict:
    """Train per cfg; returns a summary (last epoch, checkpoint path, val scores per epoch)."""
    return run_logged(_train, cfg, rank, world, progress, "train")


def _train(cfg: RunConfig, rank: int, world: int, progress: bool, logger: RunLogger, position: RunPosition) -> dict:
    tcfg, dcfg = cfg.train, cfg.data
    start_epoch = cfg.ckpt_epoch if cfg.resume else 0
    check_epochs_left(start_epoch, tcfg.max_epoch, "train")  # before any data is read
    vocab = open_vocab(cfg, progress)
    train_set = open_dataset(cfg, dcfg.split, vocab, progress)
    task = task_of(cfg)
    # the val split: process 0 scores it, or every process its share (Task.splits_evaluation)
    shared_val = task.splits_evaluation and world > 1
    val_set = None
    if dcfg.split == "train" and tcfg.eval_every_epoch and (rank == 0 or shared_val):
        val_set = open_dataset(cfg, "val", vocab, progress)
    steps_per_epoch = len(train_set) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"the {dcfg.split} split has {len(train_set)} {task.sample_noun}, fewer than one "
                            f"batch of --BS={tcfg.batch_size}.")

    paddle.seed(tcfg.seed)
    model = task.build_model(cfg.model, vocab, initial_word_vectors(cfg, vocab))
    lr_base = base_learning_rate(tcfg, dcfg.split)
    optimizer = paddle.optimizer.Adam(learning_rate=lr_base, beta1=tcfg.betas[0], beta2=tcfg.betas[1],
                                      epsilon=tcfg.eps, parameters=model.parameters(), use_multi_tensor=True)
    if cfg.resume:
        params_path = resume_from(cfg, model, {"optimizer": optimizer}, steps_per_epoch)
        if rank == 0:
            print(f"resumed from {params_path} (epoch {start_epoch} done)")
    elif cfg.ckpt_path:
        load_pretrained(model, cfg.ckpt_path, task)  # fine-tuning: fresh optimizer and schedule
        if rank == 0:
            print(f"starting from the weights of {cfg.ckpt_path} (fresh optimizer and schedule)")

    net = maybe_to_static(model, cfg)  # --TO_STATIC; the plain model otherwise
    net = paddle.DataParallel(net) if world > 1 else net
    scaler = make_grad_scaler(cfg)  # --AMP=fp16 on a GPU; None otherwise
    if rank == 0:
        logger.config(cfg.to_dict())
        logger.hparams(hparams_of(cfg.to_dict()), HPARAM_METRICS)  # VisualDL's hparams page
        start = f", from the weights of {cfg.ckpt_path}" if cfg.ckpt_path and not cfg.resume else ""
        logger.text(f"train split {dcfg.split}: {len(train_set)} {task.sample_noun}, {steps_per_epoch} steps/epoch, "
                    f"{world} process(es), vocab {task.vocab_text(vocab)}{start}")
        # the vocabularies travel with the checkpoints: --RUN=predict reads them from here
        write_checkpoint_vocab(vocab, dcfg.dataset, os.path.join(cfg.ckpt_dir, f"ckpt_{cfg.version}", VOCAB_FILE))
    history = []
    # attention pictures of a few val questions (tasks whose demo draws them), tagged per dataset
    watch = AttentionWatch.for_run(val_set, vocab, logger, dcfg.dataset) if task.watches_attention else None
    for epoch in range(start_epoch, tcfg.max_epoch):
        position.epoch, position.step, position.phase = epoch, 0, ""
        task.before_epoch(model, train_set, cfg, epoch, rank, world, progress)
        stats = train_one_epoch(net, optimizer, train_set, cfg, epoch, steps_per_epoch, lr_base, rank, world,
                                logger, progress, position, scaler, task)
        position.phase = "after its last step"
        mean_loss = stats.mean("loss", tcfg.batch_size // world, world)
        if rank == 0:
            params_path = save_epoch(cfg, epoch + 1, model, {"optimizer": optimizer},
                                     {"data_order": "permutation(seed, epoch) per epoch",
                                      "steps_per_epoch": steps_per_epoch, "lr_base": lr_base, "lr": stats.lr,
                                      "processes": world}, position)
            line = (f"epoch {epoch + 1}/{tcfg.max_epoch}: loss {mean_loss:.5f}, lr {stats.lr:.3e}, "
                    f"{stats.seconds:.1f}s, saved {params_path}")
            print(line)
            logger.text(line)
            logger.scalars({vdl_tag("train", "epoch_loss"): mean_loss, vdl_tag("train", "epoch_lr"): stats.lr},
                           epoch + 1)
            record = {"epoch": epoch + 1, "loss": mean_loss, "lr": stats.lr, "checkpoint": params_path}
            if val_set is not None and not shared_val:
                position.phase = "evaluating on val after its checkpoint"
                record["val"] = validate(model, val_set, cfg, epoch + 1, logger, progress, task)
                if watch is not None:
                    watch.log(model, epoch + 1)  # the attention pictures of the watched val questions
            history.append(record)
        if val_set is not None and shared_val:
            position.phase = "evaluating on val after its checkpoint"
            scores = validate(model, val_set, cfg, epoch + 1, logger, progress, task, rank, world)
            if rank == 0:
                history[-1]["val"] = scores
        if world > 1:
            dist.barrier()
    last = position.last_ckpt
    return {"history": history, "last_checkpoint": ckpt_paths(cfg.ckpt_dir, *last)[0] if last else None,
            "version": cfg.version}


def validate(model, val_set, cfg: RunConfig, epoch: int, logger: RunLogger, progress: bool,
             task: Optional[Task] = None, rank: int = 0, world: int = 1) -> Optional[dict]:
    """The val scores after `epoch`: the evaluator of --RUN=val, printed, logged and sent to VisualDL.
    A task with splits_evaluation may share it among `world` processes: process 0 gets the scores."""
    tcfg = cfg.train
    task = task or task_of(cfg)
    result = evaluate(model, val_set, name=f"{cfg.version}_epoch{epoch}", results_dir=cfg.results_dir,
                      batch_size=tcfg.eval_batch_size, num_workers=cfg.data.num_workers, save_pred=tcfg.save_pred,
                      progress=progress, engine=tcfg.eval_engine, precision=tcfg.eval_precision, task=task,
                      run_cfg=cfg, rank=rank, world=world)
    if result is None:
        return None  # a data-parallel process other than 0
    line = f"epoch {epoch} val: {task.format_scores(val_set, result.scores)}"
    print(line)
    logger.text(line)
    logger.scalars({vdl_tag("val", name): value for name, value in task.scalars(result.scores).items()}, epoch)
    return result.scores
