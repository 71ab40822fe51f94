"""The search supernet: MMNasNet whose every encoder/decoder position holds all candidate ops.

Each position is a `MixedOp`: its candidates in a LayerList plus architecture logits `alpha`
(one per candidate). Everything around the backbone (embedding, LSTM, adapter, linear_rel,
AttFlat heads, proj) is MMNasNet's own, so one sampled path *is* an MMNasNet:

    backbone.enc_list.<i>.candidates.<k>.<rest>  ->  backbone.enc_list.<j>.<rest>

where k is the op chosen at position i and j counts the non-skip positions before i
(`standalone_state_dict`). The optional `skip` candidate is an identity, so dropping it from
the genotype changes nothing.

Two forward modes per MixedOp; the search strategy (mmnas/search/) sets them:
- single path (`gate is None`): only the active candidate runs; the others get no gradient.
- mixed: coefficients g (a tensor, one per candidate) multiply the outputs of the involved
  candidates, out = sum_j g_j o_j, with only the active o_j differentiable (or all of them,
  `train_all`). Binary gates (ProxylessNAS): g is a one-hot leaf, the value is the active
  path's output and dL/dg_j = <dL/dout, o_j> measures every involved candidate. SNAS: g is the
  Gumbel-softmax sample z, a function of alpha, so the gradient reaches alpha through it.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn

from ..config import ModelConfig, SearchConfig
from ..ops import build_op, op_spec
from .mmnasnet import Backbone, MMNasNet, init_like_reference

_STUB_GENOTYPE = {"enc": ["FFN"], "dec": ["FFN"]}


def build_candidate(name: str, cfg: ModelConfig) -> nn.Layer:
    """Any registered op, search-only ones (skip) included."""
    return build_op(name, cfg)


def softmax_np(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


class MixedOp(nn.Layer):
    """One searchable position: candidate blocks, their logits alpha, and the sampled path."""

    def __init__(self, ops: Sequence[str], cfg: ModelConfig, alpha_init_std: float):
        super().__init__()
        self.ops = list(ops)
        self.candidates = nn.LayerList([build_candidate(name, cfg) for name in self.ops])
        self.alpha = self.create_parameter(
            [len(self.ops)], dtype="float32",
            default_initializer=nn.initializer.Normal(0.0, alpha_init_std))
        # DataParallel must not all-reduce alpha: its gradient is built by hand from the gates
        self.alpha.no_sync = True
        self.active = 0  # index of the candidate that runs
        self.involved: List[int] = [0]  # mixed forward: candidates that run
        self.gate: Optional[paddle.Tensor] = None  # mixed forward: coefficients [n] (see module doc)
        self.train_all = False  # mixed forward: every involved candidate gets weight gradients

    def probs(self) -> np.ndarray:
        return softmax_np(self.alpha.numpy().astype(np.float64))

    def set_active(self, index: int) -> None:
        self.active, self.involved, self.gate, self.train_all = int(index), [int(index)], None, False

    def sample(self, rng: np.random.Generator, arch_mode: Optional[str] = None) -> None:
        """Draw the active candidate from softmax(alpha). With arch_mode, also open the gate:
        'full' measures every candidate, 'two' a second one drawn without replacement and the
        active one chosen between the two by their renormalised probabilities (ProxylessNAS)."""
        p = self.probs()
        n = len(self.ops)
        if arch_mode == "two" and n > 2:
            pair = rng.choice(n, size=2, replace=False, p=p)
            q = softmax_np(self.alpha.numpy()[pair].astype(np.float64))
            self.active = int(pair[rng.choice(2, p=q)])
            self.involved = [int(i) for i in pair]
        else:
            self.active = int(rng.choice(n, p=p))
            self.involved = list(range(n)) if arch_mode else [self.active]
        self.gate = None
        if arch_mode:
            onehot = np.zeros(n, dtype=np.float32)
            onehot[self.active] = 1.0
            self.gate = paddle.to_tensor(onehot, stop_gradient=False)
        self.train_all = False

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        if self.gate is None:
            return self.candidates[self.active](x, y, x_mask, y_mask, relations)
        out = 0.0
        for j in self.involved:
            o = self.candidates[j](x, y, x_mask, y_mask, relations)
            out = out + self.gate[j] * (o if (j == self.active or self.train_all) else o.detach())
        return out

    def alpha_grad(self) -> np.ndarray:
        """d loss / d alpha from the gate gradients g (after an arch-step backward):
        dL/dalpha_i = sum_j g_j p_j (delta_ij - p_i) = p_i (g_i - <g, p>), over the involved
        candidates with p their renormalised probabilities; other entries get 0."""
        g_all = np.zeros(len(self.ops))
        if self.gate is not None and self.gate.grad is not None:
            g_all = self.gate.grad.numpy().astype(np.float64)
        idx = self.involved
        p = softmax_np(self.alpha.numpy()[idx].astype(np.float64))
        g = g_all[idx]
        grad = np.zeros(len(self.ops))
        grad[idx] = p * (g - np.dot(g, p))
        return grad


class SuperBackbone(Backbone):
    """Backbone with a MixedOp at every position; Backbone.forward runs it unchanged."""

    def __init__(self, cfg: ModelConfig, enc_pools, dec_pools, alpha_init_std: float):
        nn.Layer.__init__(self)
        self.enc_list = nn.LayerList([MixedOp(pool, cfg, alpha_init_std) for pool in enc_pools])
        self.dec_list = nn.LayerList([MixedOp(pool, cfg, alpha_init_std) for pool in dec_pools])


def stub_config(cfg: ModelConfig) -> ModelConfig:
    """cfg with a one-block genotype: what a task model is built with before its backbone is
    replaced by a SuperBackbone (`Searchable.make_searchable`)."""
    stub = copy.deepcopy(cfg)
    stub.enc, stub.dec = list(_STUB_GENOTYPE["enc"]), list(_STUB_GENOTYPE["dec"])
    return stub


class Searchable:
    """What makes a task's model (MMNasBase subclass) a supernet: its backbone replaced by a
    SuperBackbone, and the positions, paths and logits the search strategies drive. forward()
    is the task model's own, through the sampled path."""

    def make_searchable(self, cfg: ModelConfig, search: SearchConfig) -> None:
        self.cfg, self.search_cfg = cfg, search
        self.backbone = SuperBackbone(cfg, search.pools("enc"), search.pools("dec"), search.alpha_init_std)
        init_like_reference(self.backbone)

    # ---- positions and parameters ------------------------------------------------------------

    def mixed_ops(self, part: Optional[str] = None) -> List[MixedOp]:
        if part is None:
            return list(self.backbone.enc_list) + list(self.backbone.dec_list)
        return list(self.backbone.enc_list if part == "enc" else self.backbone.dec_list)

    def arch_parameters(self) -> List[paddle.Tensor]:
        return [m.alpha for m in self.mixed_ops()]

    def weight_parameters(self) -> List[paddle.Tensor]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # ---- paths ---------------------------------------------------------------------------------

    def sample_path(self, rng: np.random.Generator, arch_mode: Optional[str] = None) -> None:
        for m in self.mixed_ops():
            m.sample(rng, arch_mode)

    def set_path(self, choices: Dict[str, Sequence]) -> None:
        """Make one path active: choices[part][i] is an op name or a candidate index."""
        for part in ("enc", "dec"):
            for m, c in zip(self.mixed_ops(part), choices[part], strict=True):
                m.set_active(m.ops.index(c) if isinstance(c, str) else c)

    def active_path(self) -> Dict[str, List[str]]:
        return {part: [m.ops[m.active] for m in self.mixed_ops(part)] for part in ("enc", "dec")}

    def inactive_parameters(self) -> List[paddle.Tensor]:
        """Weights of candidates outside the current path (gated ones count as on the path)."""
        out = []
        for m in self.mixed_ops():
            for j, cand in enumerate(m.candidates):
                if j != m.active and not (m.train_all and j in m.involved):
                    out += cand.parameters()
        return out

    def alpha_grads(self) -> List[np.ndarray]:
        return [m.alpha_grad() for m in self.mixed_ops()]

    def close_gates(self) -> None:
        for m in self.mixed_ops():
            m.gate, m.involved, m.train_all = None, [m.active], False

    # ---- what the search found ------------------------------------------------------------

    def probabilities(self) -> Dict[str, List[List[float]]]:
        return {part: [m.probs().tolist() for m in self.mixed_ops(part)] for part in ("enc", "dec")}

    def top_choices(self) -> Dict[str, List[str]]:
        """The most probable op at every position (skip included)."""
        return {part: [m.ops[int(np.argmax(m.probs()))] for m in self.mixed_ops(part)]
                for part in ("enc", "dec")}

    def genotype(self) -> Dict[str, List[str]]:
        """Top op per position without skips: the genotype MMNasNet (and --ARCH_PATH) takes."""
        return genotype_from_choices(self.top_choices())

    def standalone_state_dict(self, choices: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, np.ndarray]:
        """Weights of one path (default: the active one) under MMNasNet's parameter names."""
        choices = choices or self.active_path()
        state = {}
        rename = {}  # "backbone.enc_list.<i>.candidates.<k>." -> "backbone.enc_list.<j>."
        for part in ("enc", "dec"):
            j = 0
            for i, (m, name) in enumerate(zip(self.mixed_ops(part), choices[part], strict=True)):
                if not op_spec(name).in_genotype:
                    continue
                rename[f"backbone.{part}_list.{i}.candidates.{m.ops.index(name)}."] = f"backbone.{part}_list.{j}."
                j += 1
        for key, value in self.state_dict().items():
            if not key.startswith("backbone."):
                state[key] = value.numpy()
                continue
            prefix = ".".join(key.split(".")[:5]) + "."
            if prefix in rename:
                state[rename[prefix] + key[len(prefix):]] = value.numpy()
        return state

    def standalone_config(self, choices: Optional[Dict[str, Sequence[str]]] = None) -> ModelConfig:
        cfg = copy.deepcopy(self.cfg)
        genotype = genotype_from_choices(choices or self.active_path())
        cfg.enc, cfg.dec = genotype["enc"], genotype["dec"]
        return cfg


class SuperNet(Searchable, MMNasNet):
    """The answer task's supernet: MMNasNet with a SuperBackbone."""

    def __init__(self, cfg: ModelConfig, search: SearchConfig, token_size: int, answer_size: int,
                 word_vectors=None):
        search.validate()
        # MMNasNet builds the shared parts; its backbone is a one-block stub replaced right away
        MMNasNet.__init__(self, stub_config(cfg), token_size, answer_size, word_vectors)
        self.make_searchable(cfg, search)


def genotype_from_choices(choices: Dict[str, Sequence[str]]) -> Dict[str, List[str]]:
    """Drop the search-only choices (skip): what is left is an MMNasNet genotype."""
    return {part: [op for op in choices[part] if op_spec(op).in_genotype] for part in ("enc", "dec")}


def build_supernet(cfg: ModelConfig, search: SearchConfig, token_size: int, answer_size: int,
                   word_vectors=None) -> SuperNet:
    return SuperNet(cfg, search, token_size, answer_size, word_vectors)
