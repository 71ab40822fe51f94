"""What training and search share: the run around the epochs and the one epoch loop.

- `run_logged`: the checks and the logger of a run, and Ctrl-C (or SIGTERM, SIGHUP) turned into
  one line saying where the run stopped and the command that resumes it;
- `open_vocab`, `open_dataset`, `initial_word_vectors`: the data of cfg.data.dataset;
- `run_epoch`: one epoch of steps. The caller gives the batches and a `step` function (train.py:
  a gradient step of the network; search.py: a step of the search strategy); the loop does the
  rest: Paddle's seed for the epoch, the loader, the learning rate of each step, the progress
  bar, Ctrl-C between steps, reading the losses (one host synchronisation every `log_every`
  steps), the stop at a non-finite loss and the per-step VisualDL scalars.

Determinism: at the start of epoch e the data order and Paddle's RNG (dropout) are both seeded
from (seed, e) (`seed_epoch`). A run resumed after epoch k therefore
replays epochs k+1.. exactly as an uninterrupted run would, given the state saved after epoch k.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import paddle
import paddle.distributed as dist

from ..config import RunConfig
from ..data import load_word_vectors
from ..data.datasets import dataset_spec
from ..progress import progress_bar
from .checkpoint import TrainingError, ckpt_paths
from .evaluate import make_loader
from .interrupt import InterruptGuard, RunInterrupted, RunPosition, interrupted_by, signal_of
from .logger import RunLogger, vdl_tag
from .resume import resume_command
from .schedule import learning_rate


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2 ** 31 - 1)


def seed_epoch(seed: int, epoch: int) -> int:
    """Seed Paddle's RNG (dropout masks) for `epoch`; returns epoch_seed, which the caller's
    data order uses. Called first thing in an epoch, before any loader starts."""
    paddle.seed(epoch_seed(seed, epoch))
    return epoch_seed(seed, epoch)


# ---- the run --------------------------------------------------------------------------------

def check_batch_split(cfg: RunConfig, world: int) -> None:
    bs, accu = cfg.train.batch_size, cfg.train.accu
    if bs % world:
        raise TrainingError(f"--BS={bs} must be divisible by the number of processes ({world}).")
    if (bs // world) % accu:
        raise TrainingError(f"--BS={bs} split over {world} process(es) gives {bs // world} per process, "
                            f"which is not divisible by --ACCU={accu}.")


def run_logged(body, cfg: RunConfig, rank: int, world: int, progress: Optional[bool], run: str = "train"):
    """body(cfg, rank, world, progress, logger, position) after the checks --RUN=train and
    --RUN=search share: the progress bar only on rank 0, the batch split, a run logger closed at
    the end, and Ctrl-C handling (SIGTERM and SIGHUP alike): any exception after such a signal
    becomes RunInterrupted, whose message says where the run stopped and the command that
    resumes it."""
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
                signum = position.guard.signum if position.guard.requested else signal_of(e)
                message = interrupt_message(cfg, run, world, position, signum) if rank == 0 else ""
                if message:
                    logger.text(message)
                raise RunInterrupted(message, signum) from None
    finally:
        logger.close()


def interrupt_message(cfg: RunConfig, run: str, world: int, position: RunPosition, signum: int) -> str:
    """The one line printed after Ctrl-C (SIGINT), SIGTERM or SIGHUP."""
    interrupted = interrupted_by(signum)
    if position.last_ckpt is None:
        return f"{interrupted} {position.where()}; nothing partial was saved; nothing to resume from"  # yet
    version, epoch = position.last_ckpt
    if epoch >= cfg.train.max_epoch:  # e.g. during the last epoch's val: every epoch is saved
        return (f"{interrupted} {position.where()}; nothing partial was saved; every epoch is saved, the "
                f"last in {ckpt_paths(cfg.ckpt_dir, version, epoch)[0]}; nothing is left to {run}")
    return (f"{interrupted} {position.where()}; nothing partial was saved; resume with: "
            f"{resume_command(cfg, run, world, version, epoch)}")


def all_reduce_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    t = paddle.to_tensor([value], dtype="float64")
    dist.all_reduce(t)
    return float(t.numpy().reshape(-1)[0])  # float() of a shape-[1] tensor fails under numpy 2


# ---- data -----------------------------------------------------------------------------------

def open_vocab(cfg: RunConfig, progress: bool):
    """The token and answer vocabularies of cfg.data.dataset (built once, then cached)."""
    return dataset_spec(cfg.data.dataset).build_vocab(cfg, progress)


def open_dataset(cfg: RunConfig, split: str, vocab, progress: bool):
    """The split of cfg.data.dataset (mmnas/data/datasets.py) with the run's data options."""
    return dataset_spec(cfg.data.dataset).open(cfg, split, vocab, progress)


def initial_word_vectors(cfg: RunConfig, vocab):
    """Word vectors for the embedding; None when the run starts from saved weights (--RESUME,
    or --CKPT_PATH to fine-tune), which overwrite it."""
    if cfg.resume or cfg.ckpt_path:
        return None
    dcfg = cfg.data
    return load_word_vectors(vocab.token_to_ix, dcfg.word_vectors, dcfg.spacy_model, dcfg.glove_path, dcfg.data_root)


# ---- one epoch ------------------------------------------------------------------------------

@dataclass
class EpochStats:
    """What one process's epoch adds up to. `losses`: each loss the steps returned, summed over
    this process's samples and steps; `loss_steps`: in how many steps it was returned."""
    losses: Dict[str, float] = field(default_factory=dict)
    loss_steps: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    lr: float = 0.0

    def mean(self, name: str, per_rank: int, world: int) -> Optional[float]:
        """Mean of loss `name` per sample over all processes (None if no step returned it)."""
        steps = self.loss_steps.get(name, 0)
        if not steps:
            return None
        return all_reduce_sum(self.losses[name], world) / (steps * per_rank * world)


# step(step_in_epoch, batch, lr) -> {"loss name": summed loss, "grad_norm": ..., other scalars}
StepFn = Callable[[int, tuple, float], Dict[str, object]]


def run_epoch(cfg: RunConfig, epoch: int, batches: List[List[int]], dataset, step: StepFn, data_size: int,
              lr_base: float, rank: int, world: int, logger: RunLogger, progress: bool, position: RunPosition,
              tag: str = "train", desc: Optional[str] = None) -> EpochStats:
    """One epoch: `batches` (this process's dataset indices per step) are loaded in order and
    each is handed to `step` with the step's learning rate, which sees `data_size` questions per
    epoch (the schedule's warm-up and decay); the caller has seeded the epoch (seed_epoch). Values `step` returns are numbers or device
    tensors; those named "...loss" are summed over samples and checked to be finite. Every
    value is logged to VisualDL as "<tag>/<name>" (losses per sample)."""
    tcfg = cfg.train
    per_rank = tcfg.batch_size // world
    steps = len(batches)
    stats, pending, start = EpochStats(), [], time.time()
    position.epoch, position.step, position.phase = epoch, 1, ""
    with progress_bar(make_loader(dataset, batches, cfg.data.num_workers), total=steps,
                      desc=desc or f"epoch {epoch + 1}/{tcfg.max_epoch}", disable=not progress, dynamic_ncols=True,
                      mininterval=1.0, delay=0) as bar:  # closed on any exit, so a Ctrl-C message starts on its own line
        # (delay=0: an epoch's bar shows from its first step, the line that says training started)
        for step_in_epoch, batch in enumerate(bar):
            position.step = step_in_epoch + 1
            position.guard.stop_together()  # data parallel: every process stops at the same step
            global_step = epoch * steps + step_in_epoch + 1  # counted from 1 over the whole run
            lr = learning_rate(global_step, epoch, data_size / tcfg.batch_size, lr_base, tcfg.warmup_epochs,
                               tcfg.lr_decay_epochs, tcfg.lr_decay_rate)
            # Ctrl-C waits for the end of the step: raised inside backward, Paddle would report it at length
            with position.guard.deferred():
                values = step(step_in_epoch, batch, lr)
            pending.append(PendingStep(step_in_epoch, global_step, lr, values))
            if len(pending) >= tcfg.log_every or step_in_epoch == steps - 1:
                read = _read_pending(pending, cfg, position, per_rank, start, logger, tag, rank)
                if progress:
                    loss_name = next(k for k in read[-1] if k.endswith("loss"))
                    bar.set_postfix(loss=f"{read[-1][loss_name] / per_rank:.4f}", lr=f"{lr:.2e}", refresh=False)
                for values in read:
                    for name, value in values.items():
                        if name.endswith("loss"):
                            stats.losses[name] = stats.losses.get(name, 0.0) + value
                            stats.loss_steps[name] = stats.loss_steps.get(name, 0) + 1
                pending = []
            position.step = min(step_in_epoch + 2, steps)  # the next one (the loader may be reading it)
    stats.seconds, stats.lr = time.time() - start, lr
    return stats


@dataclass
class PendingStep:
    """A step whose values (maybe device tensors) have not been read yet."""
    step_in_epoch: int
    global_step: int
    lr: float
    values: Dict[str, object]


def _read_pending(pending: List[PendingStep], cfg: RunConfig, position: RunPosition, per_rank: int, start: float,
                  logger: RunLogger, tag: str, rank: int) -> List[Dict[str, float]]:
    """The values of `pending` steps as floats, read with one host synchronisation; stop at the
    first non-finite loss, naming its step and the checkpoint to go back to."""
    tensors = [(i, name) for i, p in enumerate(pending) for name, v in p.values.items()
               if isinstance(v, paddle.Tensor)]
    read = [{name: float(v) for name, v in p.values.items() if not isinstance(v, paddle.Tensor)} for p in pending]
    if tensors:
        numbers = paddle.stack([pending[i].values[name].reshape([]).astype("float64") for i, name in tensors])
        for (i, name), number in zip(tensors, numbers.numpy().tolist()):
            read[i][name] = number
    for p, values in zip(pending, read):
        for name, value in sorted(values.items()):
            if name.endswith("loss") and not math.isfinite(value):
                what = "loss" if name == "loss" else name.replace("_", " ")
                last = position.last_ckpt
                where = (f"the last good checkpoint is {ckpt_paths(cfg.ckpt_dir, *last)[0]}" if last
                         else "no checkpoint was written yet")
                raise TrainingError(f"non-finite {what} ({value}) at epoch {position.epoch + 1}, step "
                                    f"{p.step_in_epoch + 1} (global step {p.global_step}); nothing was saved for "
                                    f"this epoch; {where}. Lower the learning rate or check the features with "
                                    f"tools/check_feats.py.")
    if rank == 0 and logger.has_vdl:
        for p, values in zip(pending, read):
            logger.scalars({vdl_tag(tag, name): value / per_rank if name.endswith("loss") else value
                            for name, value in values.items()}, p.global_step)
            logger.scalars({vdl_tag(tag, "lr"): p.lr}, p.global_step)
        elapsed = max(time.time() - start, 1e-9)
        logger.scalars({vdl_tag(tag, "samples_per_s"): (pending[-1].step_in_epoch + 1) * cfg.train.batch_size / elapsed},
                       pending[-1].global_step)
    return read
