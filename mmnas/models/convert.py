"""Converting weights of the original PyTorch release (openvqa `mmnasnet_small/large`).

The parameter names of openvqa's MMNasNet are those of our model; only layouts differ:
- `nn.Linear` stores its weight [out, in] in PyTorch and [in, out] in Paddle: transpose.
- `nn.Embedding` and `nn.LSTM` weights have the same layout in both (the LSTM gates are
  ordered i, f, g, o in both, weights [4H, in]): copy.
- Paddle's `nn.LSTM` exposes each tensor under two names, `lstm.weight_ih_l0` and
  `lstm.0.cell.weight_ih`; PyTorch has only the first. We write both so the result has
  exactly the key set of the released Paddle checkpoint.

The mapping works on numpy arrays and needs no torch; only `read_torch_checkpoint` does, and
it imports torch when called, so torch is never a dependency of `mmnas` itself.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

from ..config import ModelConfig
from ..checkpoint_files import CheckpointError, atomic_save, extract_state_dict, match_state_dict, safe_load
from .mmnasnet import MMNasNet

TORCH_MISSING = "reading a PyTorch checkpoint needs torch: pip install torch (CPU build is enough)"

# torch: lstm.weight_ih_l0; Paddle's alias of the same tensor: lstm.0.cell.weight_ih
_TORCH_LSTM = re.compile(r"^(?P<prefix>(?:.*\.)?lstm)\.(?P<kind>weight|bias)_(?P<gate>ih|hh)_l(?P<layer>\d+)$")
_PADDLE_LSTM = re.compile(r"^(?P<prefix>(?:.*\.)?lstm)\.(?P<layer>\d+)\.cell\.(?P<kind>weight|bias)_(?P<gate>ih|hh)$")


def _is_linear_weight(key: str, value: np.ndarray) -> bool:
    """A 2-D `*.weight` that is neither the word embedding nor an LSTM tensor."""
    if value.ndim != 2 or not key.endswith(".weight"):
        return False
    if key == "embedding.weight" or key.endswith(".embedding.weight"):
        return False
    return not (_TORCH_LSTM.match(key) or _PADDLE_LSTM.match(key))


def _as_float32(value) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def torch_to_paddle_state(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PyTorch-layout state dict (numpy values) -> Paddle layout, with the LSTM aliases added.

    Linear weights are transposed; embedding and LSTM tensors are copied. Raises
    CheckpointError if the input already holds Paddle-only names (it is not a torch dict)."""
    already = [k for k in state if _PADDLE_LSTM.match(k)]
    if already:
        raise CheckpointError(f"the state dict already holds Paddle LSTM names ({already[0]}, ...): "
                              f"it is in Paddle layout, not PyTorch's; load it directly instead of converting")
    out: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = _as_float32(value)
        if _is_linear_weight(key, value):
            out[key] = np.ascontiguousarray(value.T)
            continue
        out[key] = np.ascontiguousarray(value)
        m = _TORCH_LSTM.match(key)
        if m:
            out[f"{m['prefix']}.{m['layer']}.cell.{m['kind']}_{m['gate']}"] = out[key]
    return out


def paddle_to_torch_state(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Paddle-layout state dict -> PyTorch layout: Linear weights transposed back and the
    LSTM aliases (`lstm.0.cell.*`) folded into the `lstm.*_l0` names PyTorch uses."""
    out: Dict[str, np.ndarray] = {}
    aliases: Dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        m = _PADDLE_LSTM.match(key)
        if m:
            aliases[f"{m['prefix']}.{m['kind']}_{m['gate']}_l{m['layer']}"] = value
        elif _is_linear_weight(key, value):
            out[key] = np.ascontiguousarray(value.T)
        else:
            out[key] = value
    for key, value in aliases.items():  # a file with only the alias names still converts
        out.setdefault(key, value)
    return out


def read_torch_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """Read a torch.save'd checkpoint (a state dict, or a dict with a `state_dict` entry,
    possibly with `module.` prefixes) into numpy arrays in PyTorch layout.

    Uses `weights_only=True`, so loading cannot run code hidden in the file."""
    _refuse_numpy_pickle(path)
    try:
        import torch  # lazy: only this path needs it
    except ImportError:
        raise CheckpointError(TORCH_MISSING) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    arrays = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:  # numpy has no bfloat16
                value = value.float()
            value = value.numpy()
        arrays[key] = value
    return extract_state_dict(arrays, path)


def _refuse_numpy_pickle(path: str) -> None:
    """A plain pickle of numpy arrays is a Paddle weights file already (torch.save writes a
    zip, or a legacy pickle of torch tensors that `safe_load` refuses): say so plainly."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            return
    try:
        obj = safe_load(path)
    except CheckpointError:
        return  # holds more than numpy: let torch try
    if isinstance(obj, dict):  # a legacy torch file opens with a bare magic number instead
        raise CheckpointError(f"{path} holds numpy arrays, not torch tensors: it is a Paddle weights "
                              f"file already, use it directly (e.g. --CKPT_PATH {path}) without converting")


def check_hidden_size(state: Dict[str, np.ndarray], cfg: ModelConfig, path: str = "<checkpoint>") -> None:
    """Name the config mismatch in one line before the key-by-key report would list every
    layer: the LSTM's hidden weight [4H, H] gives the checkpoint's hidden size."""
    w = state.get("lstm.weight_hh_l0")
    if w is not None and np.ndim(w) == 2 and w.shape[1] != cfg.hidden_size:
        raise CheckpointError(f"{path} has hidden size {w.shape[1]} (lstm.weight_hh_l0 {list(w.shape)}) but "
                              f"the config has hidden_size {cfg.hidden_size}: choose the config the "
                              f"checkpoint was trained with (--MODEL tiny: 64, small: 512, large: 1024)")


def checkpoint_sizes(state: Dict[str, np.ndarray], path: str = "<checkpoint>") -> Tuple[int, int]:
    """(token_size T, answer_size A) of a Paddle-layout state dict, from the shapes of
    `embedding.weight` [T, 300] and `proj.weight` [FLAT_OUT, A]."""
    for key in ("embedding.weight", "proj.weight"):
        if key == "proj.weight" and key not in state and "embedding.weight" in state:
            raise CheckpointError(f"{path} has no answer layer (`proj.weight`): an MMNasNet of another task "
                                  f"(grounding or matching), not a VQA/GQA answer model")
        if key not in state:
            raise CheckpointError(f"{path} has no `{key}`: it is not an MMNasNet checkpoint "
                                  f"(or not a complete one)")
        if np.ndim(state[key]) != 2:
            raise CheckpointError(f"{path}: `{key}` has shape {list(np.shape(state[key]))}, expected 2-D")
    return int(state["embedding.weight"].shape[0]), int(state["proj.weight"].shape[1])


def convert_openvqa_checkpoint(in_path: str, out_path: str, cfg: ModelConfig,
                               token_size: Optional[int] = None,
                               answer_size: Optional[int] = None) -> Dict[str, object]:
    """Read a PyTorch checkpoint, convert it, check it fits MMNasNet(cfg, T, A) and write it
    as a Paddle `.pdparams`. T and A come from the checkpoint; if `token_size` / `answer_size`
    are given they must agree. Returns a summary (keys, token_size, answer_size, out)."""
    state = torch_to_paddle_state(read_torch_checkpoint(in_path))
    T, A = checkpoint_sizes(state, in_path)
    for flag, wanted, found, key in (("--token-size", token_size, T, "embedding.weight"),
                                     ("--answer-size", answer_size, A, "proj.weight")):
        if wanted is not None and wanted != found:
            raise CheckpointError(f"{flag} {wanted} does not match {in_path}, whose `{key}` gives "
                                  f"{found}; drop {flag} (sizes are read from the checkpoint) or "
                                  f"pick the checkpoint trained with that vocabulary")
    check_hidden_size(state, cfg, in_path)
    model = MMNasNet(cfg, T, A)
    match_state_dict(model, state, in_path)  # raises with every missing/mis-shaped key listed
    atomic_save(state, out_path)
    return {"keys": len(state), "token_size": T, "answer_size": A, "out": out_path}
