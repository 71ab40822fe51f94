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
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..config import RunConfig
from ..data import VOCAB_FILE, load_word_vectors
from ..data.datasets import dataset_spec
from ..models import build_model
from ..models.loss import answer_loss
from ..progress import progress_bar
from ..runtime import amp_context, clip_and_step, make_grad_scaler, maybe_to_static
from .checkpoint import load_weights, safe_load, save_checkpoint, to_numpy_state, CheckpointError
from .evaluate import evaluate, make_loader, write_json_atomic
from .interrupt import InterruptGuard, RunInterrupted, RunPosition
from .logger import RunLogger
from .resume import mismatched_setting, resume_command
from .schedule import base_learning_rate, learning_rate
from .watch_attention import HPARAM_METRICS, AttentionWatch, hparams_of


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
                    scaler=None, position: Optional[RunPosition] = None) -> EpochStats:
    """One epoch of steps; `scaler` is the fp16 loss scaler (runtime.make_grad_scaler) or None;
    `position` is kept at the step in progress (for the Ctrl-C message)."""
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
    start = time.time()
    position = position or RunPosition()
    position.epoch, position.step, position.phase = epoch, 1, ""
    # per-step losses and gradient norms stay on the device and are read every log_every steps
    # (and at the end): one host synchronisation per read instead of one per step on a GPU
    loss_sum, lr, pending = 0.0, 0.0, []
    with progress_bar(make_loader(dataset, [ordered for ordered, _ in plans], cfg.data.num_workers), total=steps_per_epoch,
                      desc=f"epoch {epoch + 1}/{tcfg.max_epoch}", disable=not progress, dynamic_ncols=True,
                      mininterval=1.0) as bar:  # closed on any exit, so a Ctrl-C message starts on its own line
        for step_in_epoch, (region_feats, boxes, question_ids, answer_scores, _) in enumerate(bar):
            position.step = step_in_epoch + 1
            position.guard.stop_together()  # data parallel: every process stops at the same step
            step = epoch * steps_per_epoch + step_in_epoch + 1  # counted from 1 over the whole run
            lr = learning_rate(step, epoch, len(dataset) / tcfg.batch_size, lr_base, tcfg.warmup_epochs,
                               tcfg.lr_decay_epochs, tcfg.lr_decay_rate)
            optimizer.set_lr(lr)
            step_loss = 0.0
            pieces = plans[step_in_epoch][1]
            for i, (lo, hi, n) in enumerate(pieces):
                # gradients are all-reduced only on the last piece's backward
                sync = model.no_sync() if (world > 1 and i < len(pieces) - 1) else contextlib.nullcontext()
                # Ctrl-C waits for the end of backward: raised inside it, Paddle would report it at length
                with position.guard.deferred(), sync:
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
            position.step = min(step_in_epoch + 2, steps_per_epoch)  # the next one (the loader may be reading it)
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


def run_logged(body, cfg: RunConfig, rank: int, world: int, progress: Optional[bool], run: str = "train"):
    """body(cfg, rank, world, progress, logger, position) after the checks --RUN=train and
    --RUN=search share: the progress bar only on rank 0, the batch split, a run logger closed at
    the end, and Ctrl-C handling: any exception after a Ctrl-C becomes RunInterrupted, whose
    message says where the run stopped and the command that resumes it."""
    progress = (rank == 0) if progress is None else (progress and rank == 0)
    check_batch_split(cfg, world)
    logger = RunLogger(cfg.results_dir, cfg.version, enabled=rank == 0)
    position = RunPosition(guard=InterruptGuard(world),
                           last_ckpt=(cfg.ckpt_version, cfg.ckpt_epoch) if cfg.resume else None)
    try:
        with position.guard:
            try:
                return body(cfg, rank, world, progress, logger, position)
            except BaseException as e:
                if not position.guard.caused(e):
                    raise
                message = interrupt_message(cfg, run, world, position) if rank == 0 else ""
                if message:
                    logger.text(message)
                raise RunInterrupted(message) from None
    finally:
        logger.close()


def interrupt_message(cfg: RunConfig, run: str, world: int, position: RunPosition) -> str:
    """The one line printed after Ctrl-C."""
    if position.last_ckpt is None:
        return f"interrupted {position.where()}; nothing partial was saved; nothing to resume from"  # yet
    return (f"interrupted {position.where()}; nothing partial was saved; resume with: "
            f"{resume_command(cfg, run, world, *position.last_ckpt)}")


def train(cfg: RunConfig, rank: int = 0, world: int = 1, progress: Optional[bool] = None) -> dict:
    """Train per cfg; returns a summary (last epoch, checkpoint path, val scores per epoch)."""
    return run_logged(_train, cfg, rank, world, progress, "train")


def check_resume(saved, opt_path: str, cfg: RunConfig, steps_per_epoch: int) -> None:
    """Refuse to resume a checkpoint whose run differs from this one in what decides the result."""
    if saved.get("steps_per_epoch") != steps_per_epoch:
        raise TrainingError(f"{opt_path} was trained with {saved.get('steps_per_epoch')} steps per epoch, this "
                            f"run has {steps_per_epoch}: resume with the same --SPLIT and --BS, or the data "
                            f"order and LR schedule would differ from the interrupted run.")
    differs = mismatched_setting(saved, cfg)
    if differs:
        raise TrainingError(f"{opt_path} was trained with other settings ({differs}); resume through run.py "
                            f"--RESUME=True, which takes them from the checkpoint.")


def _train(cfg: RunConfig, rank: int, world: int, progress: bool, logger: RunLogger, position: RunPosition) -> dict:
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
        check_resume(saved, opt_path, cfg, steps_per_epoch)
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
        logger.hparams(hparams_of(cfg.to_dict()), HPARAM_METRICS)  # VisualDL's hparams page
        logger.text(f"train split {dcfg.split}: {len(train_set)} questions, {steps_per_epoch} steps/epoch, "
                    f"{world} process(es), vocab T={vocab.token_size} A={vocab.answer_size}")
        # the vocabularies travel with the checkpoints: --RUN=predict reads them from here
        write_json_atomic(vocab.to_dict(), os.path.join(cfg.ckpt_dir, f"ckpt_{cfg.version}", VOCAB_FILE))
    history = []
    watch = AttentionWatch.for_run(val_set, vocab, logger)  # attention pictures of a few val questions
    last_ckpt = ckpt_paths(cfg.ckpt_dir, cfg.ckpt_version, start_epoch)[0] if cfg.resume else None
    for epoch in range(start_epoch, tcfg.max_epoch):
        position.epoch, position.step, position.phase = epoch, 0, ""
        try:
            stats = train_one_epoch(net, optimizer, train_set, cfg, epoch, steps_per_epoch, lr_base,
                                    rank, world, logger, progress, scaler, position)
        except TrainingError as e:
            where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            raise TrainingError(f"{e}; {where}. Lower the learning rate or check the features with "
                                f"tools/check_feats.py.") from None
        position.phase = "after its last step"
        mean_loss = _all_reduce_sum(stats.loss_sum, world) / (stats.samples * world)
        if rank == 0:
            params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.version, epoch + 1)
            position.phase = "saving its checkpoint"
            with position.guard.deferred():  # Ctrl-C waits until both files are complete
                save_checkpoint(to_numpy_state(model.state_dict()), params_path,
                                {"optimizer": optimizer_state_to_save(optimizer, model), "epoch": epoch + 1,
                                 "seed": tcfg.seed, "data_order": "permutation(seed, epoch) per epoch",
                                 "steps_per_epoch": steps_per_epoch, "lr_base": lr_base, "lr": stats.lr,
                                 "processes": world, "config": cfg.to_dict()}, opt_path, "--CKPT_DIR")
                last_ckpt = params_path
                position.last_ckpt, position.phase = (cfg.version, epoch + 1), "after saving its checkpoint"
            line = (f"epoch {epoch + 1}/{tcfg.max_epoch}: loss {mean_loss:.5f}, lr {stats.lr:.3e}, "
                    f"{stats.seconds:.1f}s, saved {params_path}")
            print(line)
            logger.text(line)
            logger.scalars({"epoch/loss": mean_loss, "epoch/lr": stats.lr}, epoch + 1)
            record = {"epoch": epoch + 1, "loss": mean_loss, "lr": stats.lr, "checkpoint": params_path}
            if val_set is not None:
                position.phase = "evaluating on val after its checkpoint"
                result = evaluate(model, val_set, name=f"{cfg.version}_epoch{epoch + 1}",
                                  results_dir=cfg.results_dir, batch_size=tcfg.eval_batch_size,
                                  num_workers=dcfg.num_workers, save_pred=tcfg.save_pred, progress=progress,
                                  engine=tcfg.eval_engine, precision=tcfg.eval_precision)
                line = f"epoch {epoch + 1} val: {val_set.format_scores(result.scores)}"
                print(line)
                logger.text(line)
                logger.scalars({"val/overall": result.scores["overall"],
                                **{f"val/{t}": v for t, v in result.scores["per_answer_type"].items()}},
                               epoch + 1)
                record["val"] = result.scores
                if watch is not None:
                    watch.log(model, epoch + 1)  # the attention pictures of the watched val questions
            history.append(record)
        if world > 1:
            dist.barrier()
    return {"history": history, "last_checkpoint": last_ckpt, "version": cfg.version}


def _all_reduce_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    t = paddle.to_tensor([value], dtype="float64")
    dist.all_reduce(t)
    return float(t.numpy().reshape(-1)[0])  # float() of a shape-[1] tensor fails under numpy 2
