"""Typed run configuration: YAML files merged into dataclasses, then CLI overrides.

A config file is plain data with three sections, each optional:

    model: {hidden_size: 512, genotype: {enc: [...], dec: [...]}, ...}
    data:  {data_root: ./data, split: train+val+vg, ...}
    train: {batch_size: 64, lr_base: 1.2e-4, ...}

A file may name another with `base: <path relative to itself>`; the base is read first and
the file's own values override it. Unknown keys are an error (a typo must not be ignored).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

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
}

OPS_ENC = ("SA", "FFN")
OPS_DEC = ("SA", "GA", "RSA", "FFN")


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message says which and why."""


@dataclass
class ModelConfig:
    hidden_size: int = 512
    heads: int = 8
    rel_head_width: int = 64  # RSA heads = hidden_size / rel_head_width
    rel_size: int = 64
    ffn_size: Optional[int] = None  # None -> 4 * hidden_size
    flat_mlp: int = 512
    glimpses: int = 1
    flat_out: int = 1024
    word_embed: int = 300
    feat_size: int = 2048
    max_token: int = 14
    max_regions: int = 100
    dropout: float = 0.1
    enc: List[str] = field(default_factory=lambda: ["SA"] * 4 + ["FFN"] * 4 + ["SA"] + ["FFN"] * 3)
    dec: List[str] = field(default_factory=lambda: [
        "GA", "GA", "FFN", "FFN", "GA", "FFN", "RSA", "GA", "FFN",
        "GA", "RSA", "FFN", "RSA", "SA", "FFN", "RSA", "GA", "FFN"])

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    def validate(self) -> None:
        if self.hidden_size % self.heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by model.heads={self.heads}")
        if self.hidden_size % self.rel_head_width:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.rel_head_width={self.rel_head_width}")
        for part, ops, allowed in (("enc", self.enc, OPS_ENC), ("dec", self.dec, OPS_DEC)):
            if not ops:
                raise ConfigError(f"model.{part} (the genotype) is empty")
            bad = [op for op in ops if op not in allowed]
            if bad:
                raise ConfigError(f"model.{part} has unknown op(s) {bad}; allowed: {list(allowed)}")


@dataclass
class DataConfig:
    data_root: str = "./data"
    split: str = "train+val+vg"  # train | train+val | train+val+vg (training); val; test
    cache_dir: str = "results/cache"
    answer_dict: Optional[str] = None  # explicit answer dictionary JSON, else built and cached
    word_vectors: str = "auto"  # auto | spacy | glove | none
    spacy_model: str = "en_vectors_web_lg"
    glove_path: Optional[str] = None  # None -> <data_root>/glove/glove.840B.300d.txt(.zip)
    preload: bool = False
    num_workers: int = 2
    drop_missing_images: bool = False
    packed_feats: Optional[str] = None  # None: a store beside each feature folder if any; a path; "off"


@dataclass
class TrainConfig:
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
    grad_clip: float = 1.0
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


SKIP_OP = "skip"  # the search's "none-style" candidate: identity, dropped from the genotype
SEARCH_OPS = {"enc": ("SA", "FFN", SKIP_OP), "dec": ("SA", "GA", "RSA", "FFN", SKIP_OP)}


@dataclass
class SearchConfig:
    """The architecture search (--RUN=search). Operator weights use the `train` section
    (batch_size, max_epoch = search epochs, lr_base, warm-up/decay, grad_clip, betas, eps, seed);
    the search width is `model.hidden_size`; the rest is here."""
    enc_positions: int = 12
    dec_positions: int = 18
    # candidate pool of every position: one list for all positions, or one list per position
    enc_ops: List[Any] = field(default_factory=lambda: ["SA", "FFN"])
    dec_ops: List[Any] = field(default_factory=lambda: ["SA", "GA", "RSA", "FFN"])
    weight_fraction: float = 0.8  # share of the split for weight steps; the rest drives arch steps
    split_seed: int = 888  # seeds the weight/arch partition of the split
    warmup_epochs: int = 20  # epochs of weight steps only (sampled paths), before arch steps start
    arch_every: int = 5  # one architecture step after every `arch_every` weight steps
    arch_mode: str = "full"  # full: gate gradients of every candidate | two: of two sampled ones
    arch_lr: float = 0.1
    arch_betas: List[float] = field(default_factory=lambda: [0.0, 0.999])
    arch_eps: float = 1e-8
    alpha_init_std: float = 1e-3  # architecture logits start ~N(0, std): uniform probabilities
    eval_top_path: bool = True  # after each epoch, score the top path on the arch part

    def pools(self, part: str) -> List[List[str]]:
        """Candidate op names of every position of `part` ("enc" or "dec")."""
        ops = self.enc_ops if part == "enc" else self.dec_ops
        n = self.enc_positions if part == "enc" else self.dec_positions
        if ops and all(isinstance(o, (list, tuple)) for o in ops):
            return [list(o) for o in ops]
        return [list(ops) for _ in range(n)]

    def validate(self) -> None:
        for part in ("enc", "dec"):
            n = self.enc_positions if part == "enc" else self.dec_positions
            if n < 1:
                raise ConfigError(f"search.{part}_positions must be at least 1, got {n}")
            pools = self.pools(part)
            if len(pools) != n:
                raise ConfigError(f"search.{part}_ops gives {len(pools)} per-position pools for "
                                  f"search.{part}_positions={n}")
            for i, pool in enumerate(pools):
                bad = [op for op in pool if op not in SEARCH_OPS[part]]
                if not pool or bad or len(set(pool)) != len(pool):
                    raise ConfigError(f"search.{part}_ops, position {i}: {pool} must be distinct op names "
                                      f"from {list(SEARCH_OPS[part])}")
        if not 0.0 < self.weight_fraction < 1.0:
            raise ConfigError(f"search.weight_fraction must be in (0, 1), got {self.weight_fraction}")
        if self.arch_every < 1 or self.warmup_epochs < 0:
            raise ConfigError("search.arch_every must be >= 1 and search.warmup_epochs >= 0")
        if self.arch_mode not in ("full", "two"):
            raise ConfigError(f"search.arch_mode must be 'full' or 'two', got {self.arch_mode!r}")


@dataclass
class RunConfig:
    run: str = "train"
    version: str = "default"
    gpu: str = ""  # "" -> CPU, "0,1" -> those GPUs
    ckpt_dir: str = "ckpt"
    results_dir: str = "results"
    resume: bool = False
    ckpt_version: Optional[str] = None
    ckpt_epoch: Optional[int] = None
    ckpt_path: Optional[str] = None
    config_path: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "search": SearchConfig}


def resolve_model_path(model: str) -> str:
    """Turn a --MODEL value (short name or YAML path) into an existing file path."""
    if model in MODEL_ALIASES:
        return os.path.join(CONFIG_DIR, MODEL_ALIASES[model])
    if os.path.isfile(model):
        return model
    raise ConfigError(f"--MODEL={model!r} is neither a known name ({', '.join(MODEL_ALIASES)}) "
                      f"nor an existing YAML file")


def read_yaml(path: str) -> Dict[str, Any]:
    """Read one config file, following `base:` links; returns the merged raw dict."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with model/data/train sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = read_yaml(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _build_section(cls, values: Dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    obj = cls()
    for key, value in values.items():
        setattr(obj, key, copy.deepcopy(value))
    return obj


def _apply_genotype(model: Dict[str, Any]) -> Dict[str, Any]:
    """Accept `genotype: {enc, dec}` in YAML as a readable spelling of model.enc / model.dec."""
    model = dict(model)
    genotype = model.pop("genotype", None)
    if genotype is not None:
        if not isinstance(genotype, dict) or not {"enc", "dec"} <= set(genotype):
            raise ConfigError("model.genotype must be a mapping with `enc` and `dec` lists")
        model["enc"], model["dec"] = list(genotype["enc"]), list(genotype["dec"])
    return model


def config_from_dict(raw: Dict[str, Any], where: str = "config") -> RunConfig:
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; expected model, data, train, search")
    cfg = RunConfig()
    cfg.model = _build_section(ModelConfig, _apply_genotype(raw.get("model") or {}), f"{where}: model")
    cfg.data = _build_section(DataConfig, raw.get("data") or {}, f"{where}: data")
    cfg.train = _build_section(TrainConfig, raw.get("train") or {}, f"{where}: train")
    cfg.search = _build_section(SearchConfig, raw.get("search") or {}, f"{where}: search")
    cfg.search.validate()
    cfg.model.validate()
    return cfg


def load_config(model: str = "small", arch_path: Optional[str] = None) -> RunConfig:
    """Load the config named by --MODEL (a short name or a YAML path); a genotype file
    (--ARCH_PATH) replaces the config's encoder/decoder ops."""
    path = resolve_model_path(model)
    cfg = config_from_dict(read_yaml(path), where=path)
    cfg.config_path = path
    if arch_path:
        genotype = read_genotype(arch_path)
        cfg.model.enc, cfg.model.dec = genotype["enc"], genotype["dec"]
        cfg.model.validate()
    return cfg


def read_genotype(path: str) -> Dict[str, List[str]]:
    """Read a genotype file (--ARCH_PATH): JSON or YAML with `enc` and `dec` lists, possibly
    nested under `genotype` (as the search writes it)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)  # JSON is valid YAML
    except OSError as e:
        raise ConfigError(f"cannot read genotype file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"genotype file {path} is not valid JSON/YAML: {e}") from None
    if isinstance(raw, dict) and "genotype" in raw:
        raw = raw["genotype"]
    if not isinstance(raw, dict) or not {"enc", "dec"} <= set(raw):
        raise ConfigError(f"genotype file {path} must hold `enc` and `dec` lists of op names")
    return {"enc": list(raw["enc"]), "dec": list(raw["dec"])}
