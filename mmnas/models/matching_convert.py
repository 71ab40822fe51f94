"""Converting a MILVLG/mmnas image-text matching checkpoint (`full_itm.py`, PyTorch) to MatchingNet:
the backbone as models/mmnas_convert.py says, and the head (reference -> here):

    attflat_x.* / attflat_y.*                    -> head.attflat_lang.* / head.attflat_img.*
    proj_norm.*, proj.*                          -> head.proj_norm.*, head.proj.*

The reference's genotype must be the config's: a position whose op differs shows up as missing
or mis-shaped keys (SA and GA hold the same parameters, so swapping those two is not detectable
from the weights: use the genotype file the checkpoint was trained with,
configs/genotypes/mmnas_itm.json for the released one).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..checkpoint_files import CheckpointError, atomic_save, match_state_dict
from ..config import ModelConfig
from .convert import check_hidden_size, read_torch_checkpoint
from .matching_head import MatchingNet
from .mmnas_convert import reference_key, reference_to_paddle

ITM_HEAD = {"attflat_x": "attflat_lang", "attflat_y": "attflat_img", "proj_norm": "proj_norm", "proj": "proj"}
ITM_NETWORK = "the reference's ITM network (full_itm.py)"


def itm_key(key: str) -> str:
    """One reference parameter name -> MatchingNet's (CheckpointError for names it cannot hold)."""
    return reference_key(key, ITM_HEAD, ITM_NETWORK)


def itm_state_to_paddle(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Reference ITM state dict (PyTorch layout, numpy) -> MatchingNet's state dict (Paddle layout)."""
    return reference_to_paddle(state, ITM_HEAD, ITM_NETWORK)


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
