"""Converting a MILVLG/mmnas image-text matching checkpoint (`full_itm.py`, PyTorch) to MatchingNet.

Names (reference -> here):
    embedding.*, lstm.*                          -> the same
    imgfeat_linear.*                             -> adapter.frcn_linear.*
    linear_y_rel.*                               -> linear_rel.*
    backnone.cells_enc.0.dag.<i>.0.<rest>        -> backbone.enc_list.<i>.<rest>   (cells_dec -> dec_list)
        <rest>: mhatt.linear_{v,k,q,merge,r}, mlp.fc.linear, mlp.linear the same; ln.* -> norm.*
    attflat_x.* / attflat_y.*                    -> head.attflat_lang.* / head.attflat_img.*
    proj_norm.*, proj.*                          -> head.proj_norm.*, head.proj.*
Layouts: Linear weights are transposed, the LSTM gets Paddle's aliases (models/convert.py).
The reference's attention projections have no bias (`bias=False`): theirs are written as zeros,
which is the same function. The reference's genotype must be the config's: a position whose op
differs shows up as missing or mis-shaped keys (SA and GA hold the same parameters, so swapping
those two is not detectable from the weights: use the genotype file the checkpoint was trained
with, configs/genotypes/mmnas_itm.json for the released one). Its net has one encoder and one
decoder cell (LAYERS=1) and no box feature path (BBOX_FEATURE=False); anything else is refused.
"""
from __future__ import annotations

import re
from typing import Dict

import numpy as np

from ..checkpoint_files import CheckpointError, atomic_save, match_state_dict
from ..config import ModelConfig
from .convert import check_hidden_size, read_torch_checkpoint, torch_to_paddle_state
from .matching_head import MatchingNet

_CELL = re.compile(r"^backnone\.cells_(?P<part>enc|dec)\.(?P<cell>\d+)\.dag\.(?P<node>\d+)\.(?P<op>\d+)\.(?P<rest>.+)$")
_PREFIXES = (("imgfeat_linear.", "adapter.frcn_linear."), ("linear_y_rel.", "linear_rel."),
             ("attflat_x.", "head.attflat_lang."), ("attflat_y.", "head.attflat_img."),
             ("proj_norm.", "head.proj_norm."), ("proj.", "head.proj."),
             ("embedding.", "embedding."), ("lstm.", "lstm."))
_BIAS_FREE = ("linear_v", "linear_k", "linear_q", "linear_merge")


def itm_key(key: str) -> str:
    """One reference parameter name -> MatchingNet's (CheckpointError for names it cannot hold)."""
    m = _CELL.match(key)
    if m:
        if m["cell"] != "0" or m["op"] != "0":
            raise CheckpointError(f"{key}: the checkpoint has more than one cell or op per node (LAYERS > 1 or a "
                                  f"multi-op genotype); MatchingNet holds one encoder and one decoder cell")
        rest = re.sub(r"^ln\.", "norm.", m["rest"])
        return f"backbone.{m['part']}_list.{m['node']}.{rest}"
    for theirs, ours in _PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    if key.startswith("bboxfeat_linear."):
        raise CheckpointError(f"{key}: the checkpoint was trained with BBOX_FEATURE=True (the 5-d box feature), "
                              f"which MatchingNet does not have")
    raise CheckpointError(f"{key} is not a parameter of the reference's ITM network (full_itm.py)")


def itm_state_to_paddle(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Reference ITM state dict (PyTorch layout, numpy) -> MatchingNet's state dict (Paddle layout)."""
    renamed = {itm_key(k): v for k, v in state.items()}
    out = torch_to_paddle_state(renamed)
    for key, weight in list(out.items()):
        layer, _, kind = key.rpartition(".")
        if kind == "weight" and layer.rsplit(".", 1)[-1] in _BIAS_FREE and ".mhatt." in key \
                and f"{layer}.bias" not in out:
            out[f"{layer}.bias"] = np.zeros(weight.shape[1], dtype=np.float32)  # Paddle weight [in, out]
    return out


def convert_itm_checkpoint(in_path: str, out_path: str, cfg: ModelConfig) -> Dict[str, object]:
    """Read a reference ITM checkpoint, convert it, check it fits MatchingNet(cfg, T) and save it."""
    state = itm_state_to_paddle(read_torch_checkpoint(in_path))
    if "embedding.weight" not in state:
        raise CheckpointError(f"{in_path} has no embedding.weight: not a complete ITM checkpoint")
    check_hidden_size(state, cfg, in_path)
    token_size = int(state["embedding.weight"].shape[0])
    model = MatchingNet(cfg, token_size)
    match_state_dict(model, state, in_path)  # every missing / mis-shaped key listed
    atomic_save(state, out_path)
    return {"keys": len(state), "token_size": token_size, "out": out_path}
