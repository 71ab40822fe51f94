"""Command line: `python run.py --RUN=train --MODEL=small --DATASET=vqa` and friends.

Flags keep the names of the original release. Every invalid combination exits with status 2
and one sentence saying what to change.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from typing import List, Optional

from .config import (BOOL_WORDS, DATASETS, MODEL_ALIASES, TRAIN_SPLITS, ConfigError, RunConfig, test_split,
                     checked_value, flag_error, load_config)
from .inference.predictor import ENGINES, PRECISIONS
from .runtime import AMP_MODES

RUN_MODES = ("train", "val", "test", "search", "predict")


def str2bool(value: str) -> bool:
    if value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def model_choices() -> str:
    """Every --MODEL name of config.MODEL_ALIASES, a second name of the same file as "(= first)"."""
    first_name = {}
    for name, path in MODEL_ALIASES.items():
        first_name.setdefault(path, name)
    return " | ".join(name if first_name[path] == name else f"{name} (= {first_name[path]})"
                      for name, path in MODEL_ALIASES.items())


class OneLineParser(argparse.ArgumentParser):
    """A malformed flag (`--NW=abc`, `--RUN=fly`) is one line on stderr and exit 2, like every other
    usage error, instead of the full usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help.\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="MMNasNet in PaddlePaddle for VQA (VQA-v2, GQA), visual grounding (RefCOCO/+/g) "
                                   "and image-text matching (Flickr30K): train, val, test, search, predict.")
    p.add_argument("--RUN", required=True, choices=RUN_MODES, help="what to do")
    p.add_argument("--MODEL", default=None,
                   help=f"{model_choices()} | path to a YAML config (default: small; for --RUN=search: search)")
    p.add_argument("--DATASET", default=None, choices=list(DATASETS),
                   help="dataset: vqa (VQA-v2 + Visual Genome), gqa, or refcoco / refcoco+ / refcocog (visual "
                        "grounding, docs/grounding.md), flickr30k (image-text matching, docs/matching.md) "
                        "(default: the config's data.dataset, vqa)")
    p.add_argument("--VERSION", help="name of this run: checkpoints go to ckpt/ckpt_<VERSION>/, the log to "
                                     "results/log/log_run_<VERSION>.txt (default: a timestamp; when resuming "
                                     "or for val/test, --CKPT_V or the --CKPT_PATH file's name)")
    p.add_argument("--GPU", default="", help="GPU ids, e.g. 0 or 0,1 (one process per GPU); empty = CPU")
    p.add_argument("--NPROCS", type=int, default=None,
                   help="number of processes (default: one per --GPU id, else 1); on CPU uses gloo; "
                        "--RUN=val/test on matching: the score matrix's image rows split over them (default 1)")
    p.add_argument("--NW", type=int, default=None, help="data loader worker processes")
    p.add_argument("--SPLIT", default=None, help=f"training split: {', '.join(TRAIN_SPLITS)} on vqa (default "
                                                 f"train+val+vg), train or train+val on gqa and refcoco*")
    p.add_argument("--EVAL_SPLIT", default=None,
                   help="what --RUN=val evaluates: val (default), testdev on gqa, testA or testB on "
                        "refcoco/refcoco+, test on refcocog; on refcoco/refcoco+ also which test split "
                        "--RUN=test evaluates")
    p.add_argument("--RESUME", type=str2bool, default=False, help="resume training from --CKPT_V/--CKPT_E")
    p.add_argument("--CKPT_V", help="version of the checkpoint to resume or evaluate")
    p.add_argument("--CKPT_E", type=int, help="epoch of the checkpoint to resume or evaluate")
    p.add_argument("--OVERWRITE", type=str2bool, default=False,
                   help="train/search: replace the checkpoints an earlier run left under the same --VERSION "
                        "(without it such a run is refused)")
    p.add_argument("--CKPT_PATH", help="a weights file: to evaluate (val/test/predict, overrides --CKPT_V/--CKPT_E) "
                   "or to start training from (train: fine-tuning, fresh optimizer)")
    p.add_argument("--MAX_EPOCH", type=int, help="train until this many epochs (default: the config's train.max_epoch)")
    p.add_argument("--PRELOAD", type=str2bool, default=None, help="keep all features in memory")
    p.add_argument("--ACCU", type=int, help="gradient accumulation: split each batch in ACCU sub-batches")
    p.add_argument("--BS", type=int, help="batch size (default 64)")
    p.add_argument("--SEED", type=int, help="random seed")
    p.add_argument("--EVAL_EE", type=str2bool, default=None, help="with --SPLIT=train, evaluate on val after every epoch")
    p.add_argument("--SAVE_PRED", type=str2bool, default=None, help="also save raw logits to results/pred/")
    p.add_argument("--DATA_ROOT", help="folder holding the dataset's folders: vqa/, gqa/, vgd/ or itm/ (default ./data; "
                                        "docs/data.md)")
    p.add_argument("--ARCH_PATH", help="genotype file (JSON/YAML with enc and dec) replacing the config's")
    p.add_argument("--DROP_MISSING", type=str2bool, default=None,
                   help="drop questions whose image has no feature file instead of stopping")
    p.add_argument("--AMP", default=None, choices=list(AMP_MODES),
                   help="mixed precision (paddle.amp O1) for training on a GPU; off by default")
    p.add_argument("--TO_STATIC", type=str2bool, default=None,
                   help="train through paddle.jit.to_static (off by default: slower on CPU)")
    p.add_argument("--CHECK_FEATS", type=str2bool, default=None,
                   help="validate every feature file the split needs before step 1 (parallel, progress bar)")
    predict = p.add_argument_group("--RUN=predict (ask one question about one image; docs/predict.md)")
    predict.add_argument("--FEATS", help="one feature file in the real layout (.npz with x, bbox, image_w, image_h)")
    predict.add_argument("--QUESTION", help="the question, e.g. \"what colour is the dog?\"")
    predict.add_argument("--IMAGE", help="the photo the features came from (default: <root>/images/<split>/ "
                                         "beside feats/<split>/ if there is one, else a blank canvas)")
    predict.add_argument("--CAPTIONS", help="matching (flickr30k): a text file of captions, one per line, to rank "
                                            "for the image --FEATS (with --QUESTION and a folder as --FEATS: "
                                            "the images of the folder are ranked for that caption)")
    predict.add_argument("--TOPK", type=int, default=5, help="how many answers (matching: images or captions) "
                                                             "to print (default 5)")
    predict.add_argument("--OUT", help="also write the answer, scores and attention as JSON to this file")
    predict.add_argument("--VOCAB", help="vocabulary JSON (default: vocab.json beside the weights, else "
                                         "built from the data files)")
    predict.add_argument("--PICTURE", help="where the attention PNG goes (default results/predict/...)")
    p.add_argument("--BUDGET_GFLOPS", default=None,
                   help="--RUN=search: the reported genotype fits this many forward GFLOPs per sample at "
                        "n = 100 regions at the width of search.target_model (search.budget_gflops; "
                        "the published small genotype: 5.75)")
    p.add_argument("--ENGINE", default=None, choices=list(ENGINES),
                   help="what runs evaluation on CPU: Paddle Inference (oneDNN) or the dygraph model "
                        "(default auto: the one measured faster on this machine for this model, cached in "
                        "<RESULTS_DIR>/cache/engine_choice.json)")
    p.add_argument("--PRECISION", default=None, choices=list(PRECISIONS),
                   help="evaluation precision; bf16 needs a CPU with avx512_bf16/AMX (default fp32)")
    p.add_argument("--CKPT_DIR", default="ckpt", help="where checkpoints are written")
    p.add_argument("--RESULTS_DIR", default="results", help="where logs and results are written")
    return p


class UsageError(ValueError):
    pass


# the flag that sets each config key: a bad value is reported under the name the user typed
FLAG_OF_KEY = {"data.dataset": "--DATASET", "data.eval_split": "--EVAL_SPLIT", "data.split": "--SPLIT",
               "data.num_workers": "--NW", "data.preload": "--PRELOAD",
               "data.data_root": "--DATA_ROOT", "data.drop_missing_images": "--DROP_MISSING",
               "train.max_epoch": "--MAX_EPOCH", "train.accu": "--ACCU", "train.batch_size": "--BS",
               "train.seed": "--SEED", "train.eval_every_epoch": "--EVAL_EE", "train.save_pred": "--SAVE_PRED",
               "train.amp": "--AMP", "train.to_static": "--TO_STATIC",
               "train.eval_engine": "--ENGINE", "train.eval_precision": "--PRECISION", "gpu": "--GPU",
               "search.budget_gflops": "--BUDGET_GFLOPS",
               "ckpt_epoch": "--CKPT_E"}


def _from_flag(key: str, value):
    """`value` of a flag checked as config `key` (type and range, see config.checked_value)."""
    return checked_value(key, value, "the command line", flag=FLAG_OF_KEY.get(key))


def check_checkpoint_flags(args: argparse.Namespace) -> None:
    """Which checkpoint flags go together, from the flags alone (before a resume reads its file)."""
    if args.RUN in ("train", "search"):
        if args.RESUME and (args.CKPT_V is None or args.CKPT_E is None):
            raise UsageError("--RESUME=True needs --CKPT_V and --CKPT_E naming the checkpoint to continue from.")
        if args.CKPT_PATH and args.RESUME:
            raise UsageError("--RESUME=True continues a run from --CKPT_V/--CKPT_E with its optimizer; "
                             "--CKPT_PATH starts a new run from a weights file. Give one of the two.")
        if args.CKPT_PATH and args.RUN == "search":
            raise UsageError("--CKPT_PATH is for --RUN=train (fine-tuning) and --RUN=val/test; a search "
                             "continues with --RESUME=True --CKPT_V --CKPT_E.")
        if args.OVERWRITE and args.RESUME:
            raise UsageError("--OVERWRITE=True starts the run again from epoch 1, --RESUME=True continues it; "
                             "give one of the two.")
        if not args.RESUME and (args.CKPT_V is not None or args.CKPT_E is not None):
            raise UsageError(f"--CKPT_V/--CKPT_E name a checkpoint to continue, which --RUN={args.RUN} does "
                             f"only with --RESUME=True; add it, or start a new run from the weights with "
                             f"--CKPT_PATH=<ckpt_dir>/ckpt_<V>/epoch<E>.pdparams.")
    elif args.OVERWRITE:
        raise UsageError(f"--OVERWRITE is for --RUN=train and --RUN=search, not --RUN={args.RUN}.")
    if args.CKPT_PATH and args.CKPT_PATH.endswith(".pdopt"):
        raise UsageError(f"--CKPT_PATH={args.CKPT_PATH} is an optimizer-state file; pass the weights "
                         f"file beside it ({args.CKPT_PATH[:-len('.pdopt')]}.pdparams).")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    check_checkpoint_flags(args)
    if args.ARCH_PATH and not os.path.isfile(args.ARCH_PATH):
        raise UsageError(f"--ARCH_PATH={args.ARCH_PATH} does not exist; expected a genotype file "
                         f"(JSON/YAML with enc and dec lists, e.g. configs/genotypes/mmnasnet_vqa.json).")
    cfg = load_config(args.MODEL or ("search" if args.RUN == "search" else "small"), args.ARCH_PATH)
    cfg.run = args.RUN
    cfg.gpu = _from_flag("gpu", args.GPU)
    cfg.ckpt_dir, cfg.results_dir = args.CKPT_DIR, args.RESULTS_DIR
    overrides = [("data", "dataset", args.DATASET), ("data", "eval_split", args.EVAL_SPLIT),
                 ("data", "split", args.SPLIT), ("data", "num_workers", args.NW),
                 ("data", "preload", args.PRELOAD), ("data", "data_root", args.DATA_ROOT),
                 ("data", "drop_missing_images", args.DROP_MISSING), ("data", "check_feats", args.CHECK_FEATS),
                 ("train", "max_epoch", args.MAX_EPOCH), ("train", "accu", args.ACCU),
                 ("train", "batch_size", args.BS), ("train", "seed", args.SEED),
                 ("train", "eval_every_epoch", args.EVAL_EE), ("train", "save_pred", args.SAVE_PRED),
                 ("train", "amp", args.AMP), ("train", "to_static", args.TO_STATIC),
                 ("train", "eval_engine", args.ENGINE), ("train", "eval_precision", args.PRECISION),
                 ("search", "budget_gflops", args.BUDGET_GFLOPS)]
    for section, key, value in overrides:
        if value is not None:
            setattr(getattr(cfg, section), key, _from_flag(f"{section}.{key}", value))
    cfg.resume, cfg.ckpt_version, cfg.ckpt_path = args.RESUME, args.CKPT_V, args.CKPT_PATH
    cfg.overwrite = args.OVERWRITE
    cfg.ckpt_epoch = _from_flag("ckpt_epoch", args.CKPT_E)
    cfg.version = args.VERSION or default_version(args)
    if cfg.resume and cfg.run in ("train", "search"):  # check_checkpoint_flags: both are given
        from .engine.resume import restore_settings  # the checkpoint's seed, batch setup, ... (or a refusal)
        for note in restore_settings(cfg, args):
            print(note, file=sys.stderr)
    if cfg.run in ("val", "test", "predict") and args.DATASET is None:
        adopt_trained_dataset(cfg, args)
    validate_args(cfg, args)
    return cfg


def adopt_trained_dataset(cfg: RunConfig, args: argparse.Namespace) -> None:
    """--RUN=val/test/predict without --DATASET: the dataset the weights were trained on (named in the
    vocab.json that training writes beside them), so that a grounding model trained on refcocog is
    evaluated on refcocog rather than on its config's refcoco; a model of another task than the
    config's is refused with the flags to give."""
    from .data.datasets import dataset_spec
    from .data.vocab import trained_dataset, vocab_beside
    weights, _ = checkpoint_for_eval(cfg)
    trained = trained_dataset(weights)
    if trained is None or trained == cfg.data.dataset or trained not in DATASETS:
        return
    source = vocab_beside(weights)
    trained_task, config_task = dataset_spec(trained).task, dataset_spec(cfg.data.dataset).task
    if trained_task != config_task:
        model = f"--MODEL={args.MODEL}" if args.MODEL else f"the default --MODEL ({cfg.config_path})"
        raise UsageError(f"{weights} was trained on {trained} (the {trained_task} task, says {source}), but "
                         f"{model} is a config of the {config_task} task; pass the --MODEL it was trained with "
                         f"(`python run.py --help` lists the configs).")
    cfg.data.dataset = trained
    print(f"note: --RUN={cfg.run} on {trained}, the dataset {weights} was trained on (from {source}); "
          f"--DATASET chooses another", file=sys.stderr)


def default_version(args: argparse.Namespace) -> str:
    """The run name when --VERSION is not given: the checkpoint's version when resuming or
    evaluating it (a standalone --RUN=val then logs to log_run_<CKPT_V>.txt beside its training),
    the weights file's name for --CKPT_PATH, else a timestamp."""
    if args.RESUME and args.CKPT_V:
        return args.CKPT_V
    if args.RUN in ("val", "test"):
        if args.CKPT_PATH:
            return os.path.splitext(os.path.basename(args.CKPT_PATH))[0]
        if args.CKPT_V:
            return args.CKPT_V
    return time.strftime("%Y%m%d_%H%M%S")


def validate_args(cfg: RunConfig, args: argparse.Namespace) -> None:
    """Checks across flags; each value alone was checked when it was set (config.checked_value)."""
    t = cfg.train
    cfg.data.validate("the command line with the config")  # splits fit the dataset after the flags
    if t.batch_size % t.accu:
        raise UsageError(f"--BS={t.batch_size} is not divisible by --ACCU={t.accu}; choose an ACCU that divides BS.")
    if args.NPROCS is not None and args.NPROCS < 1:
        raise flag_error("--NPROCS", args.NPROCS, "an integer >= 1")
    nprocs = args.NPROCS or (len(cfg.gpu.split(",")) if cfg.gpu else 1)
    if cfg.run == "train" and nprocs > 1 and (t.batch_size % nprocs or (t.batch_size // nprocs) % t.accu):
        # checked here: inside the spawned processes the same error would surface as a traceback
        raise UsageError(f"--BS={t.batch_size} must split into {nprocs} equal per-process batches that "
                         f"are each divisible by --ACCU={t.accu}; choose BS as a multiple of {nprocs * t.accu}.")
    if cfg.run not in ("train", "search"):
        if cfg.resume:
            raise UsageError(f"--RESUME is only for --RUN=train, not --RUN={cfg.run}.")
        if not cfg.ckpt_path and (cfg.ckpt_version is None or cfg.ckpt_epoch is None):
            raise UsageError(f"--RUN={cfg.run} needs weights: --CKPT_PATH=file.pdparams, or --CKPT_V and --CKPT_E.")
    if cfg.run == "predict" and (args.FEATS is None or (args.QUESTION is None) == (args.CAPTIONS is None)):
        raise UsageError("--RUN=predict needs --FEATS=<one .npz feature file> and --QUESTION=\"...\" (matching: "
                         "--FEATS=<folder> --QUESTION=\"<caption>\", or --FEATS=<file.npz> --CAPTIONS=<text file>).")
    if args.BUDGET_GFLOPS is not None and cfg.run != "search":
        raise UsageError(f"--BUDGET_GFLOPS bounds the genotype a search reports; it is for --RUN=search, "
                         f"not --RUN={cfg.run}.")
    if args.TOPK < 1:
        raise flag_error("--TOPK", args.TOPK, "an integer >= 1")
    if t.amp != "off" and not cfg.gpu:
        print(f"note: --AMP={t.amp} applies on a GPU only (--GPU=...); this CPU run trains in float32.",
              file=sys.stderr)
    from .inference.predictor import resolve_engine
    resolve_engine(t.eval_engine, t.eval_precision, gpu=bool(cfg.gpu))  # InferenceError: exit 2
    if cfg.gpu:
        import paddle
        if not paddle.device.is_compiled_with_cuda():
            raise UsageError(f"--GPU={cfg.gpu} was given but this Paddle build has no CUDA; install "
                             f"paddlepaddle-gpu or leave --GPU empty to run on the CPU.")


def check_paths(cfg: RunConfig, args: argparse.Namespace) -> None:
    """The files and folders the run reads exist (checked before a run starts, after the flags)."""
    if cfg.run == "train" and cfg.ckpt_path and not os.path.isfile(cfg.ckpt_path):
        raise UsageError(f"--CKPT_PATH={cfg.ckpt_path} does not exist; expected a weights file (.pdparams) "
                         f"to start training from.")
    if cfg.run not in ("train", "search"):
        weights, _ = checkpoint_for_eval(cfg)
        if not os.path.isfile(weights):
            if cfg.ckpt_path:
                raise UsageError(f"--CKPT_PATH={weights} does not exist; expected a weights file (.pdparams).")
            raise UsageError(f"--CKPT_V={cfg.ckpt_version} --CKPT_E={cfg.ckpt_epoch} names {weights}, which does "
                             f"not exist; check the version and epoch (or --CKPT_DIR).")
    if not os.path.isdir(cfg.data.data_root) and cfg.run != "predict":  # predict reads data only without a vocab
        given = (f"--DATA_ROOT={cfg.data.data_root}" if args.DATA_ROOT is not None else
                 f"data.data_root={cfg.data.data_root} (from {cfg.config_path}; --DATA_ROOT overrides it)")
        from .data.datasets import dataset_spec
        raise UsageError(f"{given} is not an existing folder; expected the folder holding "
                         f"{dataset_spec(cfg.data.dataset).layout.format(dataset=cfg.data.dataset)}.")


def checkpoint_for_eval(cfg: RunConfig):
    """(weights path, result name) for --RUN=val/test."""
    if cfg.ckpt_path:
        stem = os.path.splitext(os.path.basename(cfg.ckpt_path))[0]
        return cfg.ckpt_path, stem
    path = os.path.join(cfg.ckpt_dir, f"ckpt_{cfg.ckpt_version}", f"epoch{cfg.ckpt_epoch}.pdparams")
    return path, f"{cfg.ckpt_version}_epoch{cfg.ckpt_epoch}"


def run_eval(cfg: RunConfig, rank: int = 0, world: int = 1) -> Optional[dict]:
    """--RUN=val / --RUN=test: load weights, predict every question, write and score results.
    With --NPROCS (a task with Task.splits_evaluation: matching), every process runs this and
    takes its share; process 0 writes, prints and returns the result."""
    from .checkpoint_files import load_weights
    from .engine.evaluate import evaluate
    from .engine.logger import RunLogger
    from .engine.runner import open_dataset, open_vocab
    from .tasks import task_of

    weights, name = checkpoint_for_eval(cfg)  # its existence is checked by check_paths
    split = cfg.data.eval_split if cfg.run == "val" else test_split(cfg.data.dataset, cfg.data.eval_split)
    vocab = open_vocab(cfg, rank == 0)
    dataset = open_dataset(cfg, split, vocab, rank == 0)
    if cfg.run == "val" and not dataset.has_answers:
        raise UsageError(f"--RUN=val needs the answers of the {split} split; use --RUN=test for unannotated questions.")
    task = task_of(cfg)
    model = task.build_model(cfg.model, vocab)
    load_weights(model, weights)
    result = evaluate(model, dataset, name=name, results_dir=cfg.results_dir,
                      batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                      save_pred=cfg.train.save_pred, engine=cfg.train.eval_engine,
                      precision=cfg.train.eval_precision, task=task, run_cfg=cfg, rank=rank, world=world)
    if result is None:
        return None  # a data-parallel process other than 0
    print(f"wrote {result.result_path} ({len(dataset)} {task.result_noun})")
    if result.pred_path:
        print(f"wrote {result.pred_path} ({task.pred_noun})")
    if result.scores is not None:
        line = f"{name} {split}: {task.format_scores(dataset, result.scores)}"
        print(line)
        logger = RunLogger(cfg.results_dir, cfg.version, use_vdl=False)
        logger.text(f"weights {weights}")
        logger.text(line)
        for table in ("per_question_type", "per_structural_type", "per_semantic_type"):
            if table in result.scores:
                logger.text(f"{table.replace('_', ' ')}: " + ", ".join(
                    f"{k}: {v:.2f}" for k, v in sorted(result.scores[table].items())))
    return {"result_path": result.result_path, "scores": result.scores, "pred_path": result.pred_path}


def _eval_entry(cfg, rank, world):
    return run_eval(cfg, rank, world)


def _train_entry(cfg, rank, world):
    from .engine.train import train
    return train(cfg, rank, world)


def _search_entry(cfg, rank, world):
    from .engine.search import search
    return search(cfg, rank, world)


def expected_errors():
    """Errors that mean "change the command or the files", reported as one sentence, exit 2."""
    from .data.features import DataError
    from .checkpoint_files import CheckpointError, WriteError
    from .engine.distributed import WorkerStopped
    from .engine.predict import PredictError
    from .engine.resume import ResumeError
    from .engine.runlock import EarlierRunError, RunBusyError
    from .engine.checkpoint import TrainingError
    from .inference import InferenceError
    return (UsageError, ConfigError, DataError, CheckpointError, TrainingError, WorkerStopped, WriteError,
            ResumeError, RunBusyError, EarlierRunError, PredictError, InferenceError)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in RUN_MODES:  # `mmnas predict ...` = `mmnas --RUN=predict ...`
        argv = [f"--RUN={argv[0]}"] + argv[1:]
    args = build_parser().parse_args(argv)
    from . import runtime
    from .engine.interrupt import stop_on_signals
    runtime.hold_stop_signals()  # (run.py holds them from its first line, before any thread starts)
    try:
        # threads, MKL's AMD path and Paddle flags, set before anything imports paddle; CPU
        # processes started for data parallel share the cores
        cpu_processes = args.NPROCS or 1 if args.RUN in ("train", "search", "val", "test") and not args.GPU else 1
        runtime.configure(processes=cpu_processes)  # imports Paddle, which installs a C++ SIGTERM handler,
        stop_on_signals()  # replaced here: SIGTERM and SIGHUP stop the run as Ctrl-C does,
        runtime.release_stop_signals()  # from now on (one that came meanwhile is taken now)
        cfg = config_from_args(args)
        check_paths(cfg, args)
        if args.RUN in ("train", "search") and not args.GPU and (args.NPROCS or 1) != cpu_processes:
            runtime.configure(processes=args.NPROCS)  # --NPROCS restored from a checkpoint (--RESUME)
        if cfg.run in ("train", "search"):
            from .engine.distributed import owns_run_folder, run_parallel
            from .engine.runlock import RunOwnership, claim_run_folder
            nprocs = args.NPROCS or (len(cfg.gpu.split(",")) if cfg.gpu else 1)
            # the run folder and log belong to this run until it ends (taken here, never in the
            # processes it spawns)
            owner = RunOwnership(cfg.ckpt_dir, cfg.results_dir, cfg.version) if owns_run_folder() else nullcontext()
            with owner:
                if owns_run_folder():
                    for note in claim_run_folder(cfg.ckpt_dir, cfg.results_dir, cfg.version, run=cfg.run,
                                                 resume_version=cfg.ckpt_version if cfg.resume else None,
                                                 overwrite=cfg.overwrite, weights=cfg.ckpt_path):
                        print(note, file=sys.stderr)
                run_parallel(_train_entry if cfg.run == "train" else _search_entry, cfg, nprocs, cfg.gpu,
                             expected=expected_errors())
        elif cfg.run == "predict":
            from .engine.predict import run_predict
            from .engine.predict_grounding import run_predict_grounding
            from .tasks import task_of
            weights, _ = checkpoint_for_eval(cfg)
            task_name = task_of(cfg).name
            if task_name == "matching":  # retrieval with one query: images for a caption, captions for an image
                from .engine.predict_matching import run_match_predict
                run_match_predict(cfg, weights, args.FEATS, args.QUESTION, args.CAPTIONS, topk=args.TOPK,
                                  out_json=args.OUT, vocab_path=args.VOCAB, picture_path=args.PICTURE)
                return 0
            if args.CAPTIONS is not None:
                raise UsageError("--CAPTIONS ranks captions with a matching model (data.dataset flickr30k, "
                                 "--MODEL=itm_tiny or itm_small); this model answers --QUESTION.")
            predict_run = {"answer": run_predict, "grounding": run_predict_grounding}[task_name]
            predict_run(cfg, weights, args.FEATS, args.QUESTION, image_path=args.IMAGE, topk=args.TOPK,
                        out_json=args.OUT, vocab_path=args.VOCAB, picture_path=args.PICTURE)
        else:
            nprocs = args.NPROCS or 1  # --RUN=val/test: one process unless --NPROCS asks for more
            if nprocs > 1:
                from .engine.distributed import run_parallel
                from .tasks import task_of
                if not task_of(cfg).splits_evaluation:
                    raise UsageError(f"--RUN={cfg.run} runs in one process for {cfg.data.dataset}; several "
                                     f"processes (--NPROCS) split the score matrix of matching only.")
                run_parallel(_eval_entry, cfg, nprocs, cfg.gpu, expected=expected_errors())
            else:
                run_eval(cfg)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP
        from .engine.interrupt import RunInterrupted, exit_status, interrupted_by, not_started_message, signal_of
        signum = signal_of(e)
        message = str(e) if isinstance(e, RunInterrupted) else (
            not_started_message(signum) if args.RUN in ("train", "search") else
            f"--RUN={args.RUN} {interrupted_by(signum)}; no result file was written")
        if message:  # empty: a process of the run printed it
            print(message, file=sys.stderr)
        return exit_status(signum)
    except expected_errors() as e:
        if str(e):  # empty: a process of the run printed it
            print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
