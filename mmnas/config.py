"""Typed run configuration: YAML files merged into dataclasses, then CLI overrides.

A config file is plain data with these sections, each optional (and `search:`, `matching:`):

    model: {hidden_size: 512, genotype: {enc: [...], dec: [...]}, ...}
    data:  {data_root: ./data, split: train+val+vg, ...}
    train: {batch_size: 64, lr_base: 1.2e-4, ...}

A file may name another with `base: <path relative to itself>`; the base is read first and
the file's sections merge into it key by key (read_yaml). Unknown keys, keys given twice, empty
sections and empty files are errors (a typo must not be ignored).

Every value, from a file or a command-line flag, goes through one checker (`checked_value`)
driven by the dataclass annotations plus the range/choice table RULES; see its docstring for
the type rules (what is coerced, what is refused).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, Union

import yaml

from .runtime import AMP_MODES

# The accepted number of regions (boxes) per image, for the dataset, check_feats and the config:
# MIN_REGIONS..max_regions, where max_regions is model.max_regions (default MAX_REGIONS, the most
# the bottom-up-attention features have). Files with more are refused, not cut, so that no image
# silently loses regions; the model itself takes any n (raise model.max_regions to allow more).
MIN_REGIONS = 1
MAX_REGIONS = 100
MAX_TOKEN_LIMIT = 512  # the most words per question (model.max_token, a vocabulary file's max_token)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")

# --MODEL short names -> config files under configs/.
MODEL_ALIASES = {
    "small": "vqa/mmnasnet_small.yml",
    "mmnasnet": "vqa/mmnasnet_small.yml",
    "large": "vqa/mmnasnet_large.yml",
    "mcan_small": "vqa/mcan_small.yml",
    "tiny": "vqa/mmnasnet_tiny.yml",
    "search": "search/search_vqa.yml",
    "search_tiny": "search/search_vqa_tiny.yml",
    "search_snas": "search/search_vqa_snas.yml",
    "search_snas_tiny": "search/search_vqa_snas_tiny.yml",
    "gqa_small": "gqa/mmnasnet_small.yml",
    "gqa_tiny": "gqa/mmnasnet_tiny.yml",
    "vgd_small": "vgd/mmnasnet_small.yml",
    "vgd_tiny": "vgd/mmnasnet_tiny.yml",
    "search_vgd": "search/search_vgd.yml",
    "search_vgd_tiny": "search/search_vgd_tiny.yml",
    "itm_small": "itm/mmnasnet_small.yml",
    "itm_tiny": "itm/mmnasnet_tiny.yml",
    "search_itm": "search/search_itm.yml",
}

TRAIN_SPLITS = ("train", "train+val", "train+val+vg")  # data.split / --SPLIT (VQA-v2's)
DATASETS = ("vqa", "gqa", "refcoco", "refcoco+", "refcocog", "flickr30k")  # data.dataset / --DATASET (mmnas/data/datasets.py)
TRAIN_PARTS = {"vqa": ("train", "val", "vg"), "gqa": ("train", "val"),  # a training split '+'-joins these
               "refcoco": ("train", "val"), "refcoco+": ("train", "val"), "refcocog": ("train", "val"),
               "flickr30k": ("train",)}
EVAL_SPLITS = {"vqa": ("val",), "gqa": ("val", "testdev"),  # data.eval_split / --EVAL_SPLIT (--RUN=val)
               "refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"), "refcocog": ("val", "test"),
               "flickr30k": ("val", "test")}  # Flickr30K's val is the dev split of f30k_precomp
# --RUN=test: the unannotated split (VQA-v2, GQA), or one of the test splits, chosen with
# data.eval_split / --EVAL_SPLIT when there are several (RefCOCO/+: testA, testB; these are annotated)
TEST_SPLITS = {"refcoco": ("testA", "testB"), "refcoco+": ("testA", "testB"), "refcocog": ("test",)}
WORD_VECTOR_SOURCES = ("auto", "spacy", "glove", "none")  # data.word_vectors
LOSSES = ("bce", "kld", "ce")  # train.loss (mmnas/models/loss.py)
# spellings of a boolean accepted in a quoted YAML string and by the True/False flags
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def test_split(dataset: str, eval_split: str) -> str:
    """The split --RUN=test evaluates (TEST_SPLITS; "test" for a dataset not listed there)."""
    splits = TEST_SPLITS.get(dataset, ("test",))
    if len(splits) == 1:
        return splits[0]
    if eval_split in splits:
        return eval_split
    raise ConfigError(f"--RUN=test on {dataset}: which test split? Give --EVAL_SPLIT={' or --EVAL_SPLIT='.join(splits)} "
                      f"(data.eval_split is {eval_split}).")


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message says which and why."""


class _Section:
    """A config section: `validate` checks every field's type and range (`checked_value`,
    coercing where unambiguous), then what spans several fields (`_check_across`)."""
    SECTION: ClassVar[str] = ""

    def validate(self, where: str = "config") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, checked_value(f"{self.SECTION}.{f.name}", getattr(self, f.name), where))
        self._check_across(where)

    def _check_across(self, where: str) -> None:
        pass


@dataclass
class ModelConfig(_Section):
    SECTION: ClassVar[str] = "model"
    hidden_size: int = 512
    heads: int = 8
    rel_head_width: int = 64  # RSA heads = hidden_size / rel_head_width
    rel_size: int = 64
    ffn_size: Optional[int] = None  # None -> 4 * hidden_size
    flat_mlp: int = 512
    glimpses: int = 1
    flat_out: int = 1024
    word_embed: int = 300
    feat_size: int = 2048  # width of a region feature; the data side refuses files of another width
    max_token: int = 14  # question length in word ids: the dataset, the exported model and predict
    #                      (GQA keeps questions whole: its configs set the longest question, 29)
    max_regions: int = MAX_REGIONS  # images with more regions are refused (MIN_REGIONS above)
    dropout: float = 0.1
    enc: List[str] = field(default_factory=lambda: ["SA"] * 4 + ["FFN"] * 4 + ["SA"] + ["FFN"] * 3)
    dec: List[str] = field(default_factory=lambda: [
        "GA", "GA", "FFN", "FFN", "GA", "FFN", "RSA", "GA", "FFN",
        "GA", "RSA", "FFN", "RSA", "SA", "FFN", "RSA", "GA", "FFN"])

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    def _check_across(self, where: str) -> None:
        for divisor in ("heads", "rel_head_width"):
            if self.hidden_size % getattr(self, divisor):
                raise ConfigError(f"{where}: model.hidden_size={self.hidden_size} is not divisible by "
                                  f"model.{divisor}={getattr(self, divisor)}; change one of them.")


@dataclass
class DataConfig(_Section):
    SECTION: ClassVar[str] = "data"
    dataset: str = "vqa"  # vqa | gqa: the files under <data_root>/<dataset>/ and their metric
    data_root: str = "./data"
    split: str = "train+val+vg"  # the training split: a '+'-join of TRAIN_PARTS[dataset]
    eval_split: str = "val"  # what --RUN=val evaluates: val (VQA-v2, GQA) or testdev (GQA)
    cache_dir: Optional[str] = None  # vocabulary cache; None: <results_dir>/cache (RunConfig.cache_dir)
    answer_dict: Optional[str] = None  # explicit answer dictionary JSON, else built and cached
    word_vectors: str = "auto"  # auto | spacy | glove | none
    spacy_model: str = "en_vectors_web_lg"
    glove_path: Optional[str] = None  # None -> <data_root>/glove/glove.840B.300d.txt(.zip)
    preload: bool = False
    num_workers: int = 2
    drop_missing_images: bool = False
    packed_feats: Optional[str] = None  # None: a store beside each feature folder if any; a path; "off"
    check_feats: bool = False  # validate every feature file the split needs before step 1 (--CHECK_FEATS)

    def _check_across(self, where: str) -> None:
        parts = TRAIN_PARTS[self.dataset]
        if not all(p in parts for p in self.split.split("+")):
            raise ConfigError(f"{where}: data.split={self.split} is not a training split of {self.dataset}; "
                              f"expected a '+'-join of {', '.join(parts)}.")
        if self.eval_split not in EVAL_SPLITS[self.dataset]:
            raise ConfigError(f"{where}: data.eval_split={self.eval_split} is not an evaluation split of "
                              f"{self.dataset}; expected one of {', '.join(EVAL_SPLITS[self.dataset])}.")


@dataclass
class TrainConfig(_Section):
    SECTION: ClassVar[str] = "train"
    batch_size: int = 64
    accu: int = 1  # gradient accumulation: each batch split in `accu` sub-batches, one step
    box_pieces: int = 2  # each sub-batch sorted by box count and run in this many pieces, each
    #                      padded to its own largest n (same gradient, ~1.3x faster on n 10..100)
    max_epoch: int = 13
    lr_base: float = 1.2e-4
    lr_base_vg: float = 1e-4  # used instead of lr_base when the split includes vg
    lr_decay_epochs: List[int] = field(default_factory=lambda: [10, 12])
    lr_decay_rate: float = 0.2
    warmup_epochs: int = 3  # warm-up spans (warmup_epochs + 1) epochs' worth of steps
    grad_clip: float = 1.0  # global gradient-norm clip; 0 = none (GQA recipe)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    loss: str = "bce"  # bce | kld
    seed: int = 888
    eval_every_epoch: bool = True
    eval_batch_size: int = 256
    eval_engine: str = "auto"  # auto | dygraph | inference: what runs val/test (mmnas/inference)
    eval_precision: str = "fp32"  # fp32 | bf16 (Paddle Inference on a CPU with bf16 instructions)
    save_pred: bool = False
    log_every: int = 20  # steps between reads of the loss (progress bar, VisualDL, non-finite check)
    amp: str = "off"  # off | fp16 | bf16: paddle.amp O1 on a GPU (ignored, with a warning, on CPU)
    to_static: bool = False  # paddle.jit.to_static the model (measured slower on CPU)


@dataclass
class MatchingConfig(_Section):
    """Image-text matching (data.dataset flickr30k; mmnas/tasks/matching.py, docs/matching.md):
    the loss, the hard negatives mined before each epoch, and how evaluation ranks."""
    SECTION: ClassVar[str] = "matching"
    positive_weight: float = 2.0  # weight of the positive pair's BCE (the reference adds it twice)
    bce_form: str = "sigmoid"  # sigmoid: BCE on probabilities (the reference) | logits: BCE-with-logits
    mine_from_epoch: int = 0  # epochs (counted from 0) from which hard negatives are mined before each
    #                           epoch; before it, uniform random negatives are drawn anew every epoch
    mine_candidates: int = 64  # random candidates scored per anchor (the reference's NEG_RANDSIZE)
    hard_negatives: int = 5  # the best-scored candidates kept per anchor (NEG_HARDSIZE)
    mine_anchors: int = 50  # anchors scored per mining pass (each with mine_candidates pairs)
    two_stage_top_k: int = 0  # 0: evaluation scores every (image, caption) pair; k > 0: a cheap first
    #                           ranking, then full passes on the top k per image and per caption

    def _check_across(self, where: str) -> None:
        if self.hard_negatives > self.mine_candidates:
            raise ConfigError(f"{where}: matching.hard_negatives={self.hard_negatives} cannot be kept out of "
                              f"matching.mine_candidates={self.mine_candidates}; raise the candidates.")


TAU_ANNEALS = ("constant", "linear", "exponential", "cosine")  # snas temperature schedules


@dataclass
class SearchConfig(_Section):
    """The architecture search (--RUN=search). Operator weights use the `train` section
    (batch_size, max_epoch = search epochs, lr_base, warm-up/decay, grad_clip, betas, eps, seed);
    the search width is `model.hidden_size`; the rest is here. `algorithm` picks the strategy
    (mmnas/search/): binary_gate (MMnas) or snas; fields marked binary_gate / snas are read by
    that strategy only."""
    SECTION: ClassVar[str] = "search"

    algorithm: str = "binary_gate"  # a strategy registered in mmnas/search/ (binary_gate | snas)
    enc_positions: int = 12
    dec_positions: int = 18
    # candidate pool of every position: one list for all positions, or one list per position
    enc_ops: List[Union[str, List[str]]] = field(default_factory=lambda: ["SA", "FFN"])
    dec_ops: List[Union[str, List[str]]] = field(default_factory=lambda: ["SA", "GA", "RSA", "FFN"])
    weight_fraction: float = 0.8  # share of the split for weight steps; the rest drives arch steps
    #                               (snas: trains on everything and only scores the rest's share)
    split_seed: int = 888  # seeds the weight/arch partition of the split
    warmup_epochs: int = 20  # binary_gate: epochs of weight steps only, before arch steps start
    arch_every: int = 5  # binary_gate: one architecture step after every `arch_every` weight steps
    arch_mode: str = "full"  # binary_gate: full = gate gradients of every candidate | two = of two sampled
    arch_lr: float = 0.1
    arch_betas: List[float] = field(default_factory=lambda: [0.0, 0.999])
    arch_eps: float = 1e-8
    arch_weight_decay: float = 0.0  # L2 on the logits (Adam weight_decay; SNAS: 1e-3)
    arch_grad_clip: float = -1.0  # global-norm clip of the logits' gradient; <= 0: off
    alpha_init_std: float = 1e-3  # architecture logits start ~N(0, std): uniform probabilities
    eval_top_path: bool = True  # after each epoch, score the top path on the arch part
    tau_start: float = 1.0  # snas: Gumbel-softmax temperature at the start of the search ...
    tau_end: float = 1.0  # snas: ... and at its end
    tau_anneal: str = "constant"  # snas: constant | linear | exponential | cosine (per step)
    tau_epochs: int = 0  # snas: anneal over this many epochs, then hold tau_end; 0 = train.max_epoch
    #                      (set it to resume with a larger --MAX_EPOCH and keep the same schedule)
    hard: bool = True  # snas: straight-through one-hot samples (only the sampled op runs); False: soft
    budget_gflops: Optional[float] = None  # forward GFLOPs per sample at n = 100 regions of the
    #                                        target model; the reported genotype fits it
    flops_weight: float = 0.0  # weight of the penalty flops_weight * E[GFLOPs] added to the loss
    target_model: str = "small"  # --MODEL name or YAML: the width the genotype will be trained at

    def pools(self, part: str) -> List[List[str]]:
        """Candidate op names of every position of `part` ("enc" or "dec")."""
        ops = self.enc_ops if part == "enc" else self.dec_ops
        n = self.enc_positions if part == "enc" else self.dec_positions
        if ops and all(isinstance(o, (list, tuple)) for o in ops):
            return [list(o) for o in ops]
        return [list(ops) for _ in range(n)]

    def _check_across(self, where: str) -> None:
        from .ops.registry import op_names  # imported here: the registry loads the ops (Paddle)
        for part in ("enc", "dec"):
            allowed = op_names(part, search=True)
            n = self.enc_positions if part == "enc" else self.dec_positions
            pools = self.pools(part)
            if len(pools) != n:
                raise ConfigError(f"{where}: search.{part}_ops gives {len(pools)} per-position pools for "
                                  f"search.{part}_positions={n}")
            for i, pool in enumerate(pools):
                bad = [op for op in pool if op not in allowed]
                if not pool or bad or len(set(pool)) != len(pool):
                    raise ConfigError(f"{where}: search.{part}_ops, position {i}: {pool} must be distinct op "
                                      f"names from {list(allowed)}")


@dataclass
class RunConfig:
    run: str = "train"
    version: str = "default"
    gpu: str = ""  # "" -> CPU, "0,1" -> those GPUs
    ckpt_dir: str = "ckpt"
    results_dir: str = "results"
    resume: bool = False
    overwrite: bool = False  # train/search: replace an earlier run's checkpoints of the same version (--OVERWRITE)
    ckpt_version: Optional[str] = None
    ckpt_epoch: Optional[int] = None
    ckpt_path: Optional[str] = None
    config_path: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)

    @property
    def cache_dir(self) -> str:
        """Where the vocabularies are cached: data.cache_dir when the config gives one (relative
        to the working directory, like data.data_root), else <results_dir>/cache."""
        return self.data.cache_dir or os.path.join(self.results_dir, "cache")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "search": SearchConfig,
             "matching": MatchingConfig}


# ---- one checker for every value: types from the dataclass annotations, ranges from RULES ----

@dataclass(frozen=True)
class Rule:
    """A range or choice a value must satisfy. For a list field, `whole=True` rules test the list
    itself (length), the others each element."""
    text: str  # what is expected, read after the type: "an integer" + " >= 1"
    ok: Callable[[Any], bool]
    whole: bool = False


def at_least(low) -> Rule:
    return Rule(f">= {low}", lambda v: v >= low)


def above(low) -> Rule:
    return Rule(f"> {low}", lambda v: v > low)


def in_range(low, high) -> Rule:
    """low <= v < high."""
    return Rule(f"in [{low}, {high})", lambda v: low <= v < high)


def one_of(*choices: str) -> Rule:
    return Rule(f"one of {', '.join(choices)}", lambda v: v in choices)


class KnownOp:
    """A Rule whose choices are the op registry's names (mmnas/ops/registry.py) for one part of
    the network; read when a value is checked, because the registry imports the ops (Paddle)."""
    whole = False

    def __init__(self, part: str):
        self.part = part

    def _names(self):
        from .ops.registry import op_names
        return op_names(self.part)

    @property
    def text(self) -> str:
        return f"one of {', '.join(self._names())}"

    def ok(self, value) -> bool:
        return value in self._names()


NOT_EMPTY = Rule("not empty", lambda v: len(v) > 0, whole=True)
PAIR = Rule("with exactly 2 entries", lambda v: len(v) == 2, whole=True)
SEED = Rule("in [0, 2**32)", lambda v: 0 <= v < 2 ** 32)  # numpy's RandomState takes no more
# every split name any dataset knows, read from the per-dataset tables above; which ones the
# chosen dataset takes is checked by DataConfig.validate
_TRAIN_PART_NAMES = tuple(dict.fromkeys(p for parts in TRAIN_PARTS.values() for p in parts))
_EVAL_SPLIT_NAMES = tuple(dict.fromkeys(s for splits in EVAL_SPLITS.values() for s in splits))
TRAINING_SPLIT = Rule(f"one of {', '.join(TRAIN_SPLITS)} (or another '+'-join of {', '.join(_TRAIN_PART_NAMES)})",
                      lambda v: all(p in _TRAIN_PART_NAMES for p in v.split("+"))
                      and len(set(v.split("+"))) == len(v.split("+")))
GPU_IDS = Rule("GPU ids like 0 or 0,1 (empty: CPU)", lambda v: re.fullmatch(r"(\d+(,\d+)*)?", v) is not None)

# Every constraint beyond the type, keyed "section.field" (run-level fields: "field").
RULES: Dict[str, Tuple[Rule, ...]] = {
    "model.hidden_size": (above(0),), "model.heads": (above(0),), "model.rel_head_width": (above(0),),
    "model.rel_size": (above(0),), "model.ffn_size": (above(0),), "model.flat_mlp": (above(0),),
    "model.glimpses": (above(0),), "model.flat_out": (above(0),), "model.word_embed": (above(0),),
    "model.feat_size": (above(0),), "model.max_token": (Rule(f"in 1..{MAX_TOKEN_LIMIT}", lambda v: 1 <= v <= MAX_TOKEN_LIMIT),), "model.max_regions": (above(0),),
    "model.dropout": (in_range(0, 1),),
    "model.enc": (NOT_EMPTY, KnownOp("enc")), "model.dec": (NOT_EMPTY, KnownOp("dec")),
    "data.split": (TRAINING_SPLIT,), "data.word_vectors": (one_of(*WORD_VECTOR_SOURCES),),
    "data.dataset": (one_of(*DATASETS),), "data.eval_split": (one_of(*_EVAL_SPLIT_NAMES),),
    "data.num_workers": (at_least(0),),
    "train.batch_size": (at_least(1),), "train.accu": (at_least(1),), "train.box_pieces": (at_least(1),),
    "train.max_epoch": (at_least(1),), "train.lr_base": (above(0),), "train.lr_base_vg": (above(0),),
    "train.lr_decay_epochs": (at_least(1),), "train.lr_decay_rate": (above(0),),
    "train.warmup_epochs": (at_least(0),), "train.grad_clip": (at_least(0),),
    "train.betas": (PAIR, in_range(0, 1)), "train.eps": (above(0),), "train.loss": (one_of(*LOSSES),),
    "train.seed": (SEED,), "train.eval_batch_size": (at_least(1),), "train.log_every": (at_least(1),),
    "train.amp": (one_of(*AMP_MODES),), "train.eval_engine": (one_of("auto", "dygraph", "inference"),),
    "train.eval_precision": (one_of("fp32", "bf16"),),
    "search.enc_positions": (at_least(1),), "search.dec_positions": (at_least(1),),
    "search.weight_fraction": (Rule("in (0, 1)", lambda v: 0 < v < 1),), "search.split_seed": (SEED,),
    "search.warmup_epochs": (at_least(0),), "search.arch_every": (at_least(1),),
    "search.arch_mode": (one_of("full", "two"),), "search.arch_lr": (above(0),),
    "search.arch_betas": (PAIR, in_range(0, 1)), "search.arch_eps": (above(0),),
    "search.alpha_init_std": (at_least(0),), "search.arch_weight_decay": (at_least(0),),
    "search.tau_start": (above(0),), "search.tau_end": (above(0),), "search.tau_anneal": (one_of(*TAU_ANNEALS),),
    "search.tau_epochs": (at_least(0),), "search.budget_gflops": (above(0),), "search.flops_weight": (at_least(0),),
    "matching.positive_weight": (at_least(0),), "matching.bce_form": (one_of("sigmoid", "logits"),),
    "matching.mine_from_epoch": (at_least(0),), "matching.mine_candidates": (at_least(1),),
    "matching.hard_negatives": (at_least(1),), "matching.mine_anchors": (at_least(1),),
    "matching.two_stage_top_k": (at_least(0),),
    "gpu": (GPU_IDS,), "ckpt_epoch": (at_least(1),),
}
# YAML 1.1 reads an unquoted `off` as false; where "off" is a value of a string field, that is what was meant
_FALSE_MEANS_OFF = ("train.amp", "data.packed_feats")

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TYPE_TEXT = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
              bool: ("true or false", "true/false values")}


class _Mismatch(Exception):
    """A value (or one element of a list) that is not of the annotated type."""

    def __init__(self, value, index: Optional[int] = None):
        super().__init__()
        self.value, self.index = value, index


def _type_text(tp, plural: bool = False) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_text(a, plural) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        return ("lists of " if plural else "a list of ") + _type_text(inner, plural=True)
    return _TYPE_TEXT[tp][1 if plural else 0]


def _without_none(tp):
    """Optional[X] -> X; other types unchanged."""
    if typing.get_origin(tp) is Union and type(None) in typing.get_args(tp):
        rest = tuple(a for a in typing.get_args(tp) if a is not type(None))
        return rest[0] if len(rest) == 1 else Union[rest]
    return tp


def _expected_text(tp, rules: Tuple[Rule, ...], null_allowed: bool = True) -> str:
    """What a field takes, in words: "an integer >= 1", "a list of numbers, with exactly 2 entries,
    each in [0, 1)", "one of bce, kld", "an integer > 0, or null"."""
    core = _without_none(tp)
    each = " and ".join(rule.text for rule in rules if not rule.whole)
    text = "" if core is str and each else _type_text(core)  # "one of a, b", not "a string one of a, b"
    text += "".join(f", {rule.text}" for rule in rules if rule.whole)
    if each:
        text = f"{text}, each {each}" if typing.get_origin(core) is list else f"{text} {each}".strip()
    return text + (", or null" if core is not tp and null_allowed else "")


def _coerce(value, tp):
    """`value` as type `tp`, converted only where the meaning is unambiguous; _Mismatch if not."""
    origin = typing.get_origin(tp)
    if origin is Union:
        alternatives = typing.get_args(tp)
        if value is None and type(None) in alternatives:
            return None
        for alt in alternatives:
            try:
                return _coerce(value, alt)
            except _Mismatch:
                pass
        raise _Mismatch(value)
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(value)
        (inner,) = typing.get_args(tp)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_coerce(item, inner))
            except _Mismatch:
                raise _Mismatch(item, i) from None
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
    elif isinstance(value, bool):  # True is an int in Python; never a number here
        pass
    elif tp is int:
        if isinstance(value, int):
            return value
    elif tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise _Mismatch(value)


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def flag_error(flag: str, value, expected: str) -> ConfigError:
    """The one-sentence error for a command-line flag with an unusable value."""
    return ConfigError(f"{flag}={value} is not valid; expected {expected}.")


def checked_value(key: str, value, where: str, shown_key: Optional[str] = None, flag: Optional[str] = None):
    """`value` for the config field `key` ("train.lr_base", or "gpu" for a run-level field),
    type-checked against its dataclass annotation and RULES; raises ConfigError naming the file
    (`where`) and key, or the flag, with the value and what is expected.

    Type rules: a float field takes a number or a numeric string (PyYAML reads `1e-3` as the
    string "1e-3"); an int field takes integers only (a quoted "64" or 64.0 is refused: no
    unquoted YAML integer reads as anything else, so it is a typo or a deliberate string); a
    bool field takes true/false (and quoted true/false/yes/no/on/off/1/0); a string field takes
    strings only (an unquoted `off` for train.amp / data.packed_feats means "off"); lists are
    checked element by element; Optional fields take null. NaN and infinity are refused."""
    section, _, name = key.rpartition(".")
    tp = typing.get_type_hints(_SECTIONS[section] if section else RunConfig)[name]
    rules = RULES.get(key, ())
    is_list = typing.get_origin(_without_none(tp)) is list

    def fail(bad, index: Optional[int] = None):
        expected = _expected_text(tp, rules, null_allowed=not flag)  # a flag is never null
        if flag:
            return flag_error(flag, bad, expected)
        where_key = f"{shown_key or key}" + (f"[{index}]" if index is not None else "")
        quoted_int = _without_none(tp) is int and isinstance(bad, str) and bad.strip().lstrip("+-").isdigit()
        return ConfigError(f"{where}: {where_key} is {_shown(bad)}; expected {expected}"
                           f"{' (write it without quotes)' if quoted_int else ''}.")

    if key in _FALSE_MEANS_OFF and value is False:
        value = "off"
    try:
        value = _coerce(value, tp)
    except _Mismatch as e:
        raise fail(e.value, e.index) from None
    if value is None:
        return value
    for rule in rules:
        if rule.whole or not is_list:
            if not rule.ok(value):
                raise fail(value)
        else:
            for i, item in enumerate(value):
                if not rule.ok(item):
                    raise fail(item, i)
    return value


def resolve_model_path(model: str) -> str:
    """Turn a --MODEL value (short name or YAML path) into an existing file path."""
    if model in MODEL_ALIASES:
        return os.path.join(CONFIG_DIR, MODEL_ALIASES[model])
    if os.path.isfile(model):
        return model
    raise ConfigError(f"--MODEL={model!r} is neither a known name ({', '.join(MODEL_ALIASES)}) "
                      f"nor an existing YAML file")


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping; the message holds both lines."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping (a duplicate section,
    a duplicate key inside one) is an error instead of the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKey(None, None, f"{_shown(key)} is given twice (lines {first_line[key]} "
                                                    f"and {line}); keep one", key_node.start_mark)
                first_line[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                break
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one clause: what is wrong and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if isinstance(e, _DuplicateKey):  # its message holds the lines already
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _load_yaml_file(path: str, what: str, syntax: str = "YAML"):
    """The parsed content of one YAML (or JSON) file; ConfigError naming `what` ("config file x")
    when it cannot be read, is not UTF-8 text, is not valid `syntax`, or repeats a key."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return yaml.load(f, Loader=_StrictLoader)
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid {syntax}: {_yaml_problem(e)}.") from None


def read_yaml(path: str, _chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Read one config file, following `base:` links; returns the merged raw dict. The base is
    read first; the file's sections then merge into it one by one, key by key (a key the file
    gives replaces the base's value, the base's other keys stay)."""
    chain = _chain + (os.path.realpath(path),)
    raw = _load_yaml_file(path, f"config file {path}")
    if raw is None:
        raise ConfigError(f"config file {path} is empty; expected model/data/train/search sections "
                          f"(or base: another file).")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with model/data/train/search/matching sections, "
                          f"not {type(raw).__name__}.")
    base = raw.pop("base", None)
    for section, values in raw.items():
        if values is None or values == {}:  # a bare `train:` would otherwise replace the base's section
            raise ConfigError(f"config file {path}: section {section} is empty; give it keys or delete "
                              f"the line (a file inherits its base's sections without naming them).")
    _check_raw(raw, f"config file {path}")  # a bad value is reported in the file that holds it
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base is {_shown(base)}; expected the path of another config file.")
    base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
    if not os.path.isfile(base_path):
        raise ConfigError(f"config file {path}: base {base} names {base_path}, which does not exist; "
                          f"fix the path (it is relative to the file).")
    if os.path.realpath(base_path) in chain:
        raise ConfigError(f"config file {path}: base {base} leads back to a file already read "
                          f"({' -> '.join(chain + (os.path.realpath(base_path),))}); remove one of the base: lines.")
    merged = read_yaml(base_path, chain)
    for key, value in raw.items():
        merged[key] = {**merged.get(key, {}), **value}
    return merged


def _check_raw(raw: Dict[str, Any], where: str) -> None:
    """Sections and keys are known and each value alone is right (checked_value), in place:
    values are coerced and `model.genotype` becomes model.enc / model.dec (so a file's own
    model.enc overrides the genotype of its base). Checks across fields wait for the merged config."""
    unknown = [str(s) for s in raw if s not in _SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; expected {', '.join(_SECTIONS)}.")
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section} is {_shown(values)}; expected a mapping of keys to values.")
    if raw.get("model"):
        raw["model"] = _apply_genotype(raw["model"], where)
    for section, values in raw.items():
        cls = _SECTIONS[section]
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in values or {} if k not in known]
        if unknown:
            named = ", ".join(f"{section}.{k}" + "".join(f" (did you mean {m}?)"
                                                         for m in difflib.get_close_matches(k, known, n=1))
                              for k in unknown)
            raise ConfigError(f"{where}: unknown key(s) {named}; known: {', '.join(sorted(known))}.")
        for key, value in (values or {}).items():
            values[key] = checked_value(f"{section}.{key}", value, where)


def _checked_genotype(genotype, where: str, name: str = "") -> Dict[str, List[str]]:
    """{"enc": [...], "dec": [...]} from the genotype mapping `name` (e.g. "model.genotype"; ""
    for a whole genotype file), each list checked as model.enc / model.dec."""
    expected = "expected a mapping with enc and dec lists of op names"
    if genotype is None and not name:
        raise ConfigError(f"{where} is empty; {expected}.")
    if not isinstance(genotype, dict):
        raise ConfigError(f"{where}: {name or 'the content'} is {_shown(genotype)}; {expected}.")
    missing = [part for part in ("enc", "dec") if part not in genotype]
    if missing:
        raise ConfigError(f"{where}: {name or 'the file'} has no {' and no '.join(missing)} (its keys: "
                          f"{', '.join(map(str, genotype)) or 'none'}); {expected}.")
    return {part: checked_value(f"model.{part}", genotype[part], where,
                                shown_key=f"{name}.{part}" if name else part)
            for part in ("enc", "dec")}


def _apply_genotype(model: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Accept `genotype: {enc, dec}` in YAML as a readable spelling of model.enc / model.dec."""
    model = dict(model)
    genotype = model.pop("genotype", None)
    if genotype is not None:
        model.update(_checked_genotype(genotype, where, "model.genotype"))
    return model


def config_from_dict(raw: Dict[str, Any], where: str = "config") -> RunConfig:
    raw = copy.deepcopy(raw)
    _check_raw(raw, where)
    cfg = RunConfig()
    for section, cls in _SECTIONS.items():
        obj = cls(**(raw.get(section) or {}))
        obj.validate(where)  # checks across fields
        setattr(cfg, section, obj)
    return cfg


def load_config(model: str = "small", arch_path: Optional[str] = None) -> RunConfig:
    """Load the config named by --MODEL (a short name or a YAML path); a genotype file
    (--ARCH_PATH) replaces the config's encoder/decoder ops."""
    path = resolve_model_path(model)
    cfg = config_from_dict(read_yaml(path), where=f"config file {path}")
    cfg.config_path = path
    if arch_path:
        genotype = read_genotype(arch_path)
        cfg.model.enc, cfg.model.dec = genotype["enc"], genotype["dec"]
    return cfg


def read_genotype(path: str) -> Dict[str, List[str]]:
    """Read a genotype file (--ARCH_PATH): JSON or YAML with `enc` and `dec` lists, possibly
    nested under `genotype` (as the search writes it); the lists are checked as model.enc/dec."""
    raw = _load_yaml_file(path, f"genotype file {path}", "JSON/YAML")  # JSON is valid YAML
    if isinstance(raw, dict) and "genotype" in raw:
        return _checked_genotype(raw["genotype"], f"genotype file {path}", "genotype")
    return _checked_genotype(raw, f"genotype file {path}")
