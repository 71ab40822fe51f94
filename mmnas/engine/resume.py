"""Resuming a run exactly: the settings that determine the result come from the checkpoint.

Every `.pdopt` holds the whole config of the run that wrote it and its process count.
`restore_settings` (called by the command line before any process starts) puts those values
back into the new run's config: a value that only came from a config file is restored (with a
note), a flag given explicitly that contradicts the checkpoint is refused by name, and the
flags that do not change the result (--MAX_EPOCH, --NW, --PRELOAD, --DATA_ROOT, ...) keep the
value given. `resume_command` prints the command that continues a run, every such value
spelled out, paths absolute.
"""
from __future__ import annotations

import os
import shlex
from typing import Any, Dict, List, Optional

from ..config import MODEL_ALIASES, CONFIG_DIR, REPO_ROOT, RunConfig
from ..checkpoint_files import safe_load


class ResumeError(ValueError):
    """A resume that would not continue the checkpoint's run; the message names the flag."""


# flags whose value decides the result: given explicitly, they must agree with the checkpoint
DETERMINING_FLAGS = {"SEED": ("train", "seed"), "BS": ("train", "batch_size"), "ACCU": ("train", "accu"),
                     "SPLIT": ("data", "split"), "AMP": ("train", "amp"), "TO_STATIC": ("train", "to_static")}
# flags that do not change the result: given explicitly, they win over the checkpoint
FREE_FLAGS = {"MAX_EPOCH": ("train", "max_epoch"), "NW": ("data", "num_workers"), "PRELOAD": ("data", "preload"),
              "DATA_ROOT": ("data", "data_root"), "EVAL_EE": ("train", "eval_every_epoch"),
              "SAVE_PRED": ("train", "save_pred"), "DROP_MISSING": ("data", "drop_missing_images")}
# settings of the new run itself, never taken from the checkpoint
OWN_SETTINGS = {("data", "cache_dir")}
# settings that do not change the result even without a flag
FREE_SETTINGS = {("train", "log_every"), ("train", "eval_batch_size"), ("data", "packed_feats"),
                 ("data", "word_vectors"), ("data", "spacy_model"), ("data", "glove_path")}  # (the checkpoint
#                                                                  overwrites the initial word vectors)
SECTIONS = ("model", "data", "train", "search", "matching")


def _opt_path(cfg: RunConfig) -> str:
    return os.path.join(cfg.ckpt_dir, f"ckpt_{cfg.ckpt_version}", f"epoch{cfg.ckpt_epoch}.pdopt")


def restore_settings(cfg: RunConfig, args) -> List[str]:
    """Put the checkpoint's settings into `cfg` (see the module docstring); may set
    args.NPROCS to the checkpoint's process count. Returns the notes to print."""
    path = _opt_path(cfg)
    if not os.path.isfile(path):
        return []  # the run itself says which file is missing
    saved = safe_load(path)  # a damaged file stops here, before settings it would have restored are checked
    if not isinstance(saved, dict):
        return []
    saved_cfg = saved.get("config") or {}
    if not saved_cfg and "seed" in saved:  # checkpoints older than the saved config
        saved_cfg = {"train": {"seed": saved["seed"]}}
    explicit = {flag: getattr(args, flag) for flag in (*DETERMINING_FLAGS, *FREE_FLAGS)
                if getattr(args, flag, None) is not None}
    by_field = {v: k for k, v in {**DETERMINING_FLAGS, **FREE_FLAGS}.items()}
    restored = []
    for section in SECTIONS:
        ours = getattr(cfg, section)
        for key, value in (saved_cfg.get(section) or {}).items():
            if (section, key) in OWN_SETTINGS or not hasattr(ours, key):
                continue
            flag = by_field.get((section, key))
            current = getattr(ours, key)
            if flag in explicit:
                if flag in DETERMINING_FLAGS and current != value:
                    raise ResumeError(
                        f"--{flag}={explicit[flag]} conflicts with {path}, which was trained with "
                        f"{section}.{key}={value!r}; drop --{flag} to resume with the checkpoint's value, or "
                        f"start a new run (a new --VERSION without --RESUME)")
                continue
            if (section, key) in FREE_SETTINGS:
                continue
            if current != value:
                setattr(ours, key, value)
                restored.append(f"{section}.{key}={value!r} (was {current!r})")
    if getattr(args, "ARCH_PATH", None) and saved_cfg.get("model"):
        # the genotype file's ops were just replaced by the checkpoint's: they must have agreed
        if any(r.startswith(("model.enc=", "model.dec=")) for r in restored):
            raise ResumeError(f"--ARCH_PATH={args.ARCH_PATH} gives another genotype than {path} was trained "
                              f"with; drop --ARCH_PATH to resume with the checkpoint's genotype")
    notes = []
    if restored:
        notes.append(f"note: resuming with the settings saved in {path}: " + ", ".join(restored))
    processes = saved.get("processes")
    if isinstance(processes, int) and not getattr(args, "GPU", ""):
        if args.NPROCS is None and processes > 1:
            args.NPROCS = processes
            notes.append(f"note: resuming with {processes} processes (--NPROCS={processes}), as the checkpoint was trained")
        elif args.NPROCS is not None and args.NPROCS != processes:
            notes.append(f"note: {path} was trained with {processes} process(es), this run uses {args.NPROCS}: "
                         f"the update is the same up to float rounding")
    return notes


def mismatched_setting(saved: Dict[str, Any], cfg: RunConfig) -> Optional[str]:
    """The first result-determining setting of `cfg` that differs from the checkpoint's saved
    config ('section.key: checkpoint X, this run Y'), or None. A guard for runs started
    without the command line (restore_settings makes them agree)."""
    saved_cfg = saved.get("config") or {"train": {"seed": saved.get("seed", cfg.train.seed)}}
    ours = cfg.to_dict()
    free = set(FREE_FLAGS.values()) | FREE_SETTINGS | OWN_SETTINGS
    for section in SECTIONS:
        for key, value in (saved_cfg.get(section) or {}).items():
            if (section, key) in free or key not in ours.get(section, {}):
                continue
            if ours[section][key] != value:
                return f"{section}.{key}: the checkpoint has {value!r}, this run {ours[section][key]!r}"
    return None


def _run_py() -> str:
    path = os.path.join(REPO_ROOT, "run.py")
    return "run.py" if os.path.abspath("run.py") == path else path


def _model_name(config_path: str) -> str:
    for name, rel in MODEL_ALIASES.items():
        if os.path.abspath(os.path.join(CONFIG_DIR, rel)) == os.path.abspath(config_path):
            return name
    return os.path.abspath(config_path)


def resume_command(cfg: RunConfig, run: str, world: int, ckpt_version: str, ckpt_epoch: int) -> str:
    """The complete command that continues this run from checkpoint (ckpt_version, ckpt_epoch)."""
    t, d = cfg.train, cfg.data
    flags = [("RUN", run)]
    if cfg.config_path:
        flags.append(("MODEL", _model_name(cfg.config_path)))
    flags += [("RESUME", True), ("CKPT_V", ckpt_version), ("CKPT_E", ckpt_epoch), ("VERSION", cfg.version),
              ("CKPT_DIR", os.path.abspath(cfg.ckpt_dir)), ("RESULTS_DIR", os.path.abspath(cfg.results_dir)),
              ("DATA_ROOT", os.path.abspath(d.data_root)), ("SPLIT", d.split), ("SEED", t.seed),
              ("BS", t.batch_size), ("ACCU", t.accu), ("MAX_EPOCH", t.max_epoch), ("NW", d.num_workers),
              ("PRELOAD", d.preload), ("EVAL_EE", t.eval_every_epoch), ("SAVE_PRED", t.save_pred),
              ("DROP_MISSING", d.drop_missing_images)]
    if t.amp != "off":
        flags.append(("AMP", t.amp))
    if t.to_static:
        flags.append(("TO_STATIC", True))
    if cfg.gpu:
        flags.append(("GPU", cfg.gpu))
    elif world > 1:
        flags.append(("NPROCS", world))
    return shlex.join(["python", _run_py()] + [f"--{name}={value}" for name, value in flags])
