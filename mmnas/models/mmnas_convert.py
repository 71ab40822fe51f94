"""Converting MILVLG/mmnas checkpoints: the PyTorch `Net_Full` of its grounding (full_vgd.py) and
matching (full_itm.py) tasks, one backbone under the reference's names with a head per task.

The backbone's names (reference -> here), shared by both tasks:

    embedding.*, lstm.*                           -> the same (LSTM aliases added, convert.py)
    imgfeat_linear.*                              -> adapter.frcn_linear.*
    linear_y_rel.*                                -> linear_rel.*
    backnone.cells_enc.0.dag.<i>.0.<op params>    -> backbone.enc_list.<i>.<op params>
    backnone.cells_dec.0.dag.<i>.0.<op params>    -> backbone.dec_list.<i>.<op params>
        inside an op: ln.a_2 / ln.b_2 -> norm.a_2 / norm.b_2; mhatt.*, mlp.* unchanged

and each task's head layers go under `head.` (the tables in grounding_convert.py and
matching_convert.py). The reference's attention projections (linear_q/k/v/merge) have no bias;
ours have one, set to zero, so the converted network computes the same function. Linear weights
are transposed ([out, in] -> [in, out]). Only what the shipped configs use converts: one encoder
and one decoder cell (LAYERS=1), one op per node, no 5-d box feature (BBOX_FEATURE=False);
anything else is refused by name. SA and GA hold the same tensors, so the genotype still decides
which of the two a node is; `check_genotype` verifies what the tensors do tell (attention,
relation attention or feed-forward).
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence

import numpy as np

from ..checkpoint_files import CheckpointError
from .convert import torch_to_paddle_state

HEAD_PREFIX = "head."  # where the task models keep their head (MMNasForGrounding, MatchingNet)
_CELL = re.compile(r"^backnone\.cells_(?P<part>enc|dec)\.(?P<cell>\d+)\.dag\.(?P<node>\d+)\.(?P<op>\d+)\.(?P<rest>.+)$")
_BACKBONE = {"imgfeat_linear": "adapter.frcn_linear", "linear_y_rel": "linear_rel"}
_BIAS_FREE = ("linear_q", "linear_k", "linear_v", "linear_merge")


def reference_key(key: str, heads: Dict[str, str], network: str, head_prefix: str = HEAD_PREFIX) -> str:
    """The name here of the reference parameter `key`, `heads` mapping the task's head layers
    (reference -> here); CheckpointError naming `network` for what does not convert."""
    if key.startswith(("embedding.", "lstm.")):
        return key
    m = _CELL.match(key)
    if m:
        if m["cell"] != "0" or m["op"] != "0":
            raise CheckpointError(f"{key}: only one {m['part']}oder cell with one op per node converts (the "
                                  f"shipped LAYERS=1 genotypes); this checkpoint has more than one cell or op per node")
        rest = re.sub(r"^ln\.", "norm.", m["rest"])
        return f"backbone.{m['part']}_list.{m['node']}.{rest}"
    first, _, rest = key.partition(".")
    if first in _BACKBONE:
        return f"{_BACKBONE[first]}.{rest}"
    if first in heads:
        return f"{head_prefix}{heads[first]}.{rest}"
    if first == "bboxfeat_linear":
        raise CheckpointError(f"{key}: the checkpoint was trained with BBOX_FEATURE=True (a 5-d box feature); "
                              f"only BBOX_FEATURE=False, what every shipped config uses, converts")
    raise CheckpointError(f"{key} is not a parameter of {network}")


def reference_to_paddle(state: Dict[str, np.ndarray], heads: Dict[str, str], network: str,
                        head_prefix: str = HEAD_PREFIX) -> Dict[str, np.ndarray]:
    """A reference state dict (numpy arrays, PyTorch layout) -> this project's names and layout,
    with zero biases for the reference's bias-free attention projections."""
    renamed = {reference_key(key, heads, network, head_prefix): np.asarray(value) for key, value in state.items()}
    for key in list(renamed):
        layer, _, name = key.rpartition(".")
        if name == "weight" and ".mhatt." in key and layer.rsplit(".", 1)[-1] in _BIAS_FREE \
                and f"{layer}.bias" not in renamed:
            renamed[f"{layer}.bias"] = np.zeros(renamed[key].shape[0], dtype=np.float32)  # torch [out, in]
    return torch_to_paddle_state(renamed)


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


def check_genotype(state: Dict[str, np.ndarray], enc: Sequence[str], dec: Sequence[str], genotype_file: str) -> None:
    """CheckpointError when the genotype (model.enc / model.dec) does not fit the checkpoint's
    nodes; `genotype_file` is the published one to suggest."""
    for part, ops in (("enc", enc), ("dec", dec)):
        kinds = node_kinds(state, part)
        wanted = ["ATT" if op in ("SA", "GA") else op for op in ops]
        if kinds != wanted:
            raise CheckpointError(f"the checkpoint's {part}oder nodes are {' '.join(kinds)} (ATT = SA or GA) but "
                                  f"model.{part} is {' '.join(ops)}; use the genotype it was trained with "
                                  f"(the published one: {genotype_file})")
