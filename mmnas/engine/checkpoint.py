"""The checkpoints of a run, for training and search alike: where they are, what they hold,
writing one after an epoch, and reading one back to resume (or to fine-tune from).

A checkpoint is a pair of files in <CKPT_DIR>/ckpt_<VERSION>/: epoch<E>.pdparams (the model's
weights, a plain dict of numpy arrays) and epoch<E>.pdopt (every optimizer's state under
structured parameter names, plus the run's meta data: epoch, seed, steps per epoch, config...).
The file format itself (safe unpickling, atomic writes) is mmnas/checkpoint_files.py.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import paddle

from ..checkpoint_files import (CheckpointError, extract_state_dict, load_weights, safe_load, save_checkpoint,
                               to_numpy_state)
from ..config import RunConfig
from .interrupt import RunPosition
from .resume import mismatched_setting


class TrainingError(RuntimeError):
    """Training or search cannot go on (non-finite loss, missing checkpoint, unusable weights);
    the message says why and what to do."""


def check_epochs_left(start_epoch: int, max_epoch: int, run: str) -> None:
    """TrainingError when a resumed run has no epoch left to `run` (train or search)."""
    if start_epoch >= max_epoch:
        raise TrainingError(f"--CKPT_E={start_epoch} is already >= --MAX_EPOCH={max_epoch}; nothing to {run} "
                            f"(--MAX_EPOCH={start_epoch + 1} or more continues the run).")


def ckpt_folder(ckpt_dir: str, version: str) -> str:
    return os.path.join(ckpt_dir, f"ckpt_{version}")


def ckpt_paths(ckpt_dir: str, version: str, epoch: int) -> Tuple[str, str]:
    """(weights path, optimizer path) of the checkpoint after `epoch` epochs of run `version`."""
    folder = ckpt_folder(ckpt_dir, version)
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


def materialize_optimizer_state(optimizer, params) -> None:
    """Create Adam's moments for every parameter now, not at its first step.

    Paddle creates them lazily, for parameters that have a gradient. A search steps only the
    sampled candidates, so without this the saved state misses never-sampled ones, and after
    a resume Paddle refuses to create them ("should in state dict"). Called after loading a
    state, it also moves every loaded entry into place, so the next save is complete again."""
    block = paddle.static.default_main_program().global_block()
    optimizer._create_accumulators(block, [p for p in params if not p.stop_gradient])


# ---- writing ------------------------------------------------------------------------------

def save_epoch(cfg: RunConfig, epoch: int, model, optimizers: Dict[str, object], meta: dict,
               position: RunPosition) -> str:
    """Write the checkpoint after `epoch` epochs: the weights, each optimizer's state under its
    key (train: "optimizer"; search: also "arch_optimizer") and `meta`. Ctrl-C waits until both
    files are complete; `position` then names this checkpoint as the one to resume from.
    Returns the weights path."""
    params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.version, epoch)
    extra = {key: optimizer_state_to_save(opt, model) for key, opt in optimizers.items()}
    extra.update(meta, epoch=epoch, seed=cfg.train.seed, config=cfg.to_dict())
    position.phase = "saving its checkpoint"
    with position.guard.deferred():
        save_checkpoint(to_numpy_state(model.state_dict()), params_path, extra, opt_path, "--CKPT_DIR")
        position.last_ckpt, position.phase = (cfg.version, epoch), "after saving its checkpoint"
    return params_path


# ---- reading back -------------------------------------------------------------------------

def checkpoint_to_resume(cfg: RunConfig) -> Tuple[str, str]:
    """(params path, optimizer path) of --CKPT_V/--CKPT_E, both required to exist."""
    params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.ckpt_version, cfg.ckpt_epoch)
    for path in (params_path, opt_path):
        if not os.path.isfile(path):
            raise TrainingError(f"--RESUME needs {path}, which does not exist; check --CKPT_V/--CKPT_E "
                                f"(checkpoints are in {os.path.dirname(path)}).")
    return params_path, opt_path


def check_resume(saved: dict, opt_path: str, cfg: RunConfig, steps_per_epoch: int) -> None:
    """Refuse to resume a checkpoint whose run differs from this one in what decides the result."""
    if saved.get("steps_per_epoch") != steps_per_epoch:
        raise TrainingError(f"{opt_path} was trained with {saved.get('steps_per_epoch')} steps per epoch, this "
                            f"run has {steps_per_epoch}: resume with the same --SPLIT and --BS, or the data "
                            f"order and LR schedule would differ from the interrupted run.")
    differs = mismatched_setting(saved, cfg)
    if differs:
        raise TrainingError(f"{opt_path} was trained with other settings ({differs}); resume through run.py "
                            f"--RESUME=True, which takes them from the checkpoint.")


def resume_from(cfg: RunConfig, model, optimizers: Dict[str, object], steps_per_epoch: int,
                same: Optional[Dict[str, Tuple[object, object]]] = None) -> str:
    """Load --CKPT_V/--CKPT_E into `model` and `optimizers` (keyed as in save_epoch) after
    checking that the checkpoint belongs to this run: the same steps per epoch and settings
    (check_resume), and for each `key: (value, default)` of `same`, the same value in its meta
    data (`default` stands for a key older checkpoints lack). Returns the weights path."""
    params_path, opt_path = checkpoint_to_resume(cfg)
    load_weights(model, params_path)
    saved = safe_load(opt_path)
    for key, (expected, default) in (same or {}).items():
        found = saved.get(key, default)
        if found != expected:
            raise TrainingError(f"{opt_path} was saved by a run with {key} = {found}; this run has {expected}. "
                                f"Resume with the config and data of the interrupted run.")
    check_resume(saved, opt_path, cfg, steps_per_epoch)
    for key, optimizer in optimizers.items():
        optimizer.set_state_dict(optimizer_state_to_load(saved[key], model))
    return params_path


def load_pretrained(model, path: str, task=None) -> None:
    """Start a run from the weights in `path` (fine-tuning: the released model, a converted
    PyTorch checkpoint, an earlier run's epoch): weights only; the optimizer and the LR schedule
    start fresh. A file that holds every tensor of this model loads whole; shapes that do not fit
    this run (vocabulary sizes: the embedding's tokens, the classifier's answers; another width or
    genotype) are refused with the report --RUN=val/test gives (checkpoint_files.match_state_dict).
    A task with `backbone_prefixes` (grounding) may start from another task's checkpoint (a VQA
    model): it takes the backbone tensors that fit, keeps its fresh head, and prints both lists."""
    if not os.path.isfile(path):
        raise TrainingError(f"--CKPT_PATH={path} does not exist; expected a weights file (.pdparams) to "
                            f"start training from.")
    prefixes = getattr(task, "backbone_prefixes", None)
    if not prefixes:
        load_weights(model, path)
        return
    state = extract_state_dict(safe_load(path), path)
    own = model.state_dict()
    fits = {k for k, v in own.items() if k in state and tuple(np.shape(state[k])) == tuple(v.shape)}
    if fits == set(own):
        load_weights(model, path, state)  # a checkpoint of this task: everything
        return
    took = sorted(k for k in fits if k.startswith(prefixes))
    if not took:
        raise CheckpointError(f"--CKPT_PATH={path} has none of the backbone tensors of this model "
                              f"({', '.join(p.rstrip('.') for p in prefixes)}) in the shapes this config needs; "
                              f"start from a checkpoint of the same width and genotype (or without --CKPT_PATH).")
    # the whole state (the fresh tensors as they are), so Paddle has no key to warn about
    model.set_state_dict({**{k: v.numpy() for k, v in own.items()},
                          **{k: np.asarray(state[k], dtype=np.float32) for k in took}})
    fresh = [k for k in own if k not in took]
    print(f"fine-tuning from {path}, another task's checkpoint: took {len(took)} backbone tensors "
          f"({_count_by_part(took)}); initialised {len(fresh)} fresh:")
    for key in fresh:
        if not key.startswith(prefixes):
            why = "this task's head"
        elif key in state:
            why = f"shape {list(own[key].shape)}, the file has {list(np.shape(state[key]))}"
        else:
            why = "not in the file"
        print(f"  {key} ({why})")


def _count_by_part(keys) -> str:
    counts: Dict[str, int] = {}
    for key in keys:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{part}: {n}" for part, n in counts.items())
