"""Converting a MILVLG/mmnas visual grounding checkpoint (the PyTorch `Net_Full` of
mmnas/model/full_vgd.py) to this project's parameter names and layouts.

The reference names its layers differently; the mapping (torch -> here):

    embedding.*, lstm.*                           -> the same (LSTM aliases added, convert.py)
    imgfeat_linear.*                              -> adapter.frcn_linear.*
    linear_y_rel.*                                -> linear_rel.*
    backnone.cells_enc.0.dag.<i>.0.<op params>    -> backbone.enc_list.<i>.<op params>
    backnone.cells_dec.0.dag.<i>.0.<op params>    -> backbone.dec_list.<i>.<op params>
        inside an op: ln.a_2 / ln.b_2 -> norm.a_2 / norm.b_2; mhatt.*, mlp.* unchanged
    attflat_x.*                                   -> <head>attflat_lang.*
    attfc_y.*, proj_norm.*, proj_scores.*, proj_reg.* -> <head>attfc_img.*, <head>proj_norm.*, ...

The reference's attention projections (linear_q/k/v/merge) have no bias; ours have one, which is
set to zero, so the converted network computes the same function. Linear weights are transposed
([out, in] -> [in, out]). Only what the shipped configs use converts: one encoder and one decoder
cell (LAYERS=1), one op per node, no 5-d box feature (BBOX_FEATURE=False); anything else is
refused by name. SA and GA hold the same tensors, so the genotype (configs/genotypes/mmnas_vgd.json)
still decides which of the two a node is; `check_genotype` verifies what the tensors do tell
(attention, relation attention or feed-forward).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..checkpoint_files import CheckpointError, atomic_save, match_state_dict
from .convert import read_torch_checkpoint, torch_to_paddle_state

HEAD_PREFIX = "head."  # where GroundingNet keeps its GroundingHead
_CELL = re.compile(r"^backnone\.cells_(?P<part>enc|dec)\.(?P<cell>\d+)\.dag\.(?P<node>\d+)\.(?P<op>\d+)\.(?P<rest>.+)$")
_TOP = {"imgfeat_linear": "adapter.frcn_linear", "linear_y_rel": "linear_rel"}
_HEAD = {"attflat_x": "attflat_lang", "attfc_y": "attfc_img", "proj_norm": "proj_norm",
         "proj_scores": "proj_scores", "proj_reg": "proj_reg"}
_BIAS_FREE = ("linear_q", "linear_k", "linear_v", "linear_merge")


def vgd_key(key: str, head_prefix: str = HEAD_PREFIX) -> str:
    """The name here of the reference parameter `key`; CheckpointError for what does not convert."""
    if key.startswith(("embedding.", "lstm.")):
        return key
    m = _CELL.match(key)
    if m:
        if m["cell"] != "0" or m["op"] != "0":
            raise CheckpointError(f"{key}: only one {m['part']}oder cell with one op per node converts "
                                  f"(the shipped LAYERS=1 genotypes); this checkpoint has more")
        rest = re.sub(r"^ln\.", "norm.", m["rest"])
        return f"backbone.{m['part']}_list.{m['node']}.{rest}"
    first, _, rest = key.partition(".")
    if first in _TOP:
        return f"{_TOP[first]}.{rest}"
    if first in _HEAD:
        return f"{head_prefix}{_HEAD[first]}.{rest}"
    if first == "bboxfeat_linear":
        raise CheckpointError(f"{key}: the checkpoint was trained with BBOX_FEATURE=True (a 5-d box feature); "
                              f"only BBOX_FEATURE=False, what every shipped config uses, converts")
    raise CheckpointError(f"{key} is not a parameter of the MMnas VGD network (full_vgd.py Net_Full); "
                          f"is this a visual grounding checkpoint?")


def node_kinds(state: Dict[str, np.ndarray], part: str) -> List[str]:
    """What the reference tensors say each node of `part` ("enc"/"dec") is: "ATT" (SA or GA:
    the same tensors), "RSA" or "FFN", in node order."""
    kinds: Dict[int, str] = {}
    for key in state:
        m = _CELL.match(key)
        if not m or m["part"] != part or m["rest"].startswith("ln."):  # every node has its ln
            continue
        node = int(m["node"])
        kind = "RSA" if ".linear_r." in key else "FFN" if m["rest"].startswith("mlp.") else "ATT"
        if kinds.get(node) != "RSA":  # an RSA node's other mhatt tensors look like ATT
            kinds[node] = kind
    return [kinds[i] for i in sorted(kinds)]


def check_genotype(state: Dict[str, np.ndarray], enc: Sequence[str], dec: Sequence[str]) -> None:
    """CheckpointError when the genotype (model.enc / model.dec) does not fit the checkpoint's nodes."""
    for part, ops in (("enc", enc), ("dec", dec)):
        kinds = node_kinds(state, part)
        wanted = ["ATT" if op in ("SA", "GA") else op for op in ops]
        if kinds != wanted:
            raise CheckpointError(f"the checkpoint's {part}oder nodes are {' '.join(kinds)} (ATT = SA or GA) but "
                                  f"model.{part} is {' '.join(ops)}; use the genotype it was trained with "
                                  f"(the published one: configs/genotypes/mmnas_vgd.json)")


def vgd_torch_to_paddle(state: Dict[str, np.ndarray], head_prefix: str = HEAD_PREFIX) -> Dict[str, np.ndarray]:
    """A reference VGD state dict (numpy arrays, PyTorch layout) -> this project's names and layout,
    with zero biases for the reference's bias-free attention projections."""
    renamed: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        renamed[vgd_key(key, head_prefix)] = np.asarray(value)
    for key in list(renamed):
        layer, _, name = key.rpartition(".")
        if name == "weight" and layer.rsplit(".", 1)[-1] in _BIAS_FREE and f"{layer}.bias" not in renamed:
            renamed[f"{layer}.bias"] = np.zeros(renamed[key].shape[0], dtype=np.float32)  # torch [out, in]
    return torch_to_paddle_state(renamed)


def convert_vgd_checkpoint(in_path: str, out_path: str, enc: Optional[Sequence[str]] = None,
                           dec: Optional[Sequence[str]] = None, model=None,
                           head_prefix: str = HEAD_PREFIX) -> Dict[str, object]:
    """Read a MILVLG/mmnas VGD checkpoint, convert it, check it against the genotype (enc, dec) and,
    when given, a model (every key and shape), and write it as a Paddle .pdparams."""
    torch_state = read_torch_checkpoint(in_path)
    if enc is not None and dec is not None:
        check_genotype(torch_state, enc, dec)
    state = vgd_torch_to_paddle(torch_state, head_prefix)
    if model is not None:
        match_state_dict(model, state, in_path)
    atomic_save(state, out_path)
    return {"keys": len(state), "token_size": int(state["embedding.weight"].shape[0]), "out": out_path}
