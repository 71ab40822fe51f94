"""The op registry: one `OpSpec` per operator, read by everything that needs to know the ops.

An op declares itself once, next to its class (SA, GA, RSA, FFN and skip in blocks.py):

    @register_op("SA", reads="x", parts=("enc", "dec"), flops=sa_flops)
    class SA(PostNormBlock): ...

and from then on config validation (model.enc/dec, search.enc_ops/dec_ops), the search
supernet's candidate pools, the search heat map, and the FLOP counts (models/flops.py, the
search's FLOP budget, bench/) know it. Adding an op is one file in mmnas/ops/ that registers it
(every module of the package is imported the first time the registry is asked) plus its test
(see tests/test_search_strategies.py, which registers a toy op from the test file itself).

Every op has one call signature, `op(x, y, x_mask, y_mask, relations) -> x'`; `reads` says
which of the inputs it actually uses (documentation, and where it may stand: an op that reads
y or relations needs the other stream, which only the decoder has).

This module imports nothing heavy (no Paddle) at import time, so config.py can import it before
the runtime is configured.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

READS = ("x", "x+y", "x+relations")
PARTS = ("enc", "dec")


@dataclass(frozen=True)
class OpSpec:
    """What the rest of the code needs to know about one op.

    build(cfg) -> layer            the class (or any factory) taking the ModelConfig
    reads                          "x" | "x+y" | "x+relations"
    parts                          where it may stand: ("enc", "dec"), ("dec",), ...
    flops(cfg, n, m) -> float      forward FLOPs of one sample (matrix products, 2 per
                                   multiply-add): n = positions of its own stream x (tokens in the
                                   encoder, regions in the decoder), m = positions of the other
    in_genotype                    False for search-only candidates (skip) that the genotype drops
    """
    name: str
    build: Callable
    reads: str
    parts: Tuple[str, ...]
    flops: Callable
    in_genotype: bool = True


_REGISTRY: Dict[str, OpSpec] = {}
_LOADED = []  # becomes [True] once every module of mmnas/ops has been imported


def register_op(name: str, *, reads: str, parts, flops: Callable, in_genotype: bool = True):
    """Class decorator declaring an op (see the module docstring); returns the class unchanged."""
    if reads not in READS:
        raise ValueError(f"op {name}: reads must be one of {READS}, got {reads!r}")
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"op {name}: parts must be a non-empty subset of {PARTS}, got {parts}")

    def declare(cls):
        if name in _REGISTRY and _REGISTRY[name].build is not cls:
            raise ValueError(f"op {name!r} is already registered by {_REGISTRY[name].build.__name__}")
        _REGISTRY[name] = OpSpec(name, cls, reads, parts, flops, in_genotype)
        return cls
    return declare


def unregister_op(name: str) -> None:
    """Remove an op (tests that register a toy op clean up with this)."""
    _REGISTRY.pop(name, None)


def _registry() -> Dict[str, OpSpec]:
    if not _LOADED:  # importing the op modules registers their ops (blocks.py: the built-in ones)
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{__package__}.{module.name}")
        _LOADED.append(True)
    return _REGISTRY


def op_spec(name: str) -> OpSpec:
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown op {name!r}; registered ops: {sorted(registry)}")
    return registry[name]


def op_names(part: str = None, search: bool = False) -> Tuple[str, ...]:
    """Registered op names in registration order: those allowed in `part` ("enc"/"dec", None =
    any); with search=False only genotype ops, with search=True also search-only ones (skip)."""
    return tuple(name for name, spec in _registry().items()
                 if (part is None or part in spec.parts) and (search or spec.in_genotype))


def build_op(name: str, cfg):
    """The layer of op `name` for ModelConfig `cfg`."""
    try:
        spec = op_spec(name)
    except KeyError as e:
        raise ValueError(str(e).strip('"')) from None
    return spec.build(cfg)


def op_flops(name: str, cfg, n: int, m: int) -> float:
    """Forward FLOPs of op `name` for one sample (see OpSpec.flops)."""
    return float(op_spec(name).flops(cfg, n, m))
