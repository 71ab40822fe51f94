"""Converting a MILVLG/mmnas visual grounding checkpoint (the PyTorch `Net_Full` of
mmnas/model/full_vgd.py) to MMNasForGrounding: the backbone as models/mmnas_convert.py says, and
the head (reference -> here):

    attflat_x.*                                   -> head.attflat_lang.*
    attfc_y.*, proj_norm.*, proj_scores.*, proj_reg.* -> head.attfc_img.*, head.proj_norm.*, ...
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ..checkpoint_files import atomic_save, match_state_dict
from .convert import read_torch_checkpoint
from .mmnas_convert import HEAD_PREFIX, check_genotype as _check_genotype, reference_key, reference_to_paddle

VGD_HEAD = {"attflat_x": "attflat_lang", "attfc_y": "attfc_img", "proj_norm": "proj_norm",
            "proj_scores": "proj_scores", "proj_reg": "proj_reg"}
VGD_NETWORK = "the MMnas VGD network (full_vgd.py Net_Full); is this a visual grounding checkpoint?"
VGD_GENOTYPE = "configs/genotypes/mmnas_vgd.json"


def vgd_key(key: str, head_prefix: str = HEAD_PREFIX) -> str:
    """The name here of the reference VGD parameter `key`; CheckpointError for what does not convert."""
    return reference_key(key, VGD_HEAD, VGD_NETWORK, head_prefix)


def vgd_torch_to_paddle(state: Dict[str, np.ndarray], head_prefix: str = HEAD_PREFIX) -> Dict[str, np.ndarray]:
    """A reference VGD state dict (numpy arrays, PyTorch layout) -> this project's names and layout."""
    return reference_to_paddle(state, VGD_HEAD, VGD_NETWORK, head_prefix)


def check_genotype(state: Dict[str, np.ndarray], enc: Sequence[str], dec: Sequence[str]) -> None:
    """CheckpointError when the genotype (model.enc / model.dec) does not fit the checkpoint's nodes."""
    _check_genotype(state, enc, dec, VGD_GENOTYPE)


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
