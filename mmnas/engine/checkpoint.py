"""Reading weights safely, checking them against a model, and writing checkpoints atomically.

`.pdparams` / `.pdopt` / `.pkl` files are pickles, and a pickle can run any code when it is
loaded. We never hand a file to `pickle.load` as is: `safe_load` uses an unpickler that can
only build containers, numbers, strings and numpy arrays, and refuses anything else by name.
"""
from __future__ import annotations

import io
import os
import re
import pickle
import tempfile
from typing import Any, Dict, Mapping, Optional

import numpy as np

# (module, name) pairs a weights file may reference: numpy array reconstruction (numpy 1.x
# and 2.x spellings), OrderedDict, and the helper protocol-2 pickles use to encode bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}

# Paddle's own bookkeeping entry in saved state dicts: not a parameter.
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_WRAPPER_PREFIXES = ("_layers.", "module.")


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a weights file may only hold containers, numbers, "
            f"strings and numpy arrays")


def safe_load(path: str) -> Any:
    """Unpickle `path` allowing only containers, numbers, strings and numpy arrays."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a zip archive (a PyTorch checkpoint?). Convert it first with "
            f"`python tools/convert_openvqa_ckpt.py {path} out.pdparams`")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise CheckpointError(f"{path} is not a readable weights file (truncated or not a "
                              f"pickle?): {type(e).__name__}: {e}") from None


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> Dict[str, np.ndarray]:
    """Accept a flat state dict or a dict with a `state_dict` entry; strip `_layers.` /
    `module.` prefixes left by a data-parallel wrapper; drop Paddle's name table."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    state = {}
    for key, value in obj.items():
        if key == _PADDLE_NAME_TABLE:
            continue
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        state[key] = np.asarray(value)
    return state


# What a shape mismatch on these keys means for the user.
_KEY_MEANINGS = {
    "embedding.weight": "the question vocabulary size differs (T): the token vocabulary was built "
                        "from different question files than the checkpoint's, e.g. VG questions "
                        "absent or present when the vocabulary was built",
    "proj.weight": "the answer vocabulary size differs (A): the answer dictionary differs from the "
                   "checkpoint's (3129 answers on VQA-v2); pass the dictionary it was trained with",
    "proj.bias": "the answer vocabulary size differs (A)",
}


def match_state_dict(model, state: Dict[str, np.ndarray], path: str = "<checkpoint>") -> Dict[str, np.ndarray]:
    """Check `state` against `model` key by key and shape by shape; raise one error listing
    every missing, unexpected and mis-shaped key. Fills aliases (Paddle's LSTM exposes each
    weight under two names) from whichever name the file has."""
    own = model.state_dict()
    # keys naming the same tensor, e.g. lstm.weight_ih_l0 and lstm.0.cell.weight_ih
    by_tensor: Dict[str, list] = {}
    for key, tensor in own.items():
        by_tensor.setdefault(tensor.name, []).append(key)
    state = dict(state)
    for keys in by_tensor.values():
        present = [k for k in keys if k in state]
        for k in present[1:]:
            if not np.array_equal(state[k], state[present[0]]):
                raise CheckpointError(f"{path}: {present[0]} and {k} name the same tensor but "
                                      f"hold different values; the file is inconsistent")
        for k in keys:
            if k not in state and present:
                state[k] = state[present[0]]

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [(k, tuple(own[k].shape), tuple(state[k].shape)) for k in own
                 if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"{path} does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        for key, expected, found in misshaped:
            meaning = f" -> {_KEY_MEANINGS[key]}" if key in _KEY_MEANINGS else ""
            lines.append(f"  {key}: model expects {list(expected)}, file has {list(found)}{meaning}")
        if missing or unexpected:
            lines.append("  (is the config/genotype the one this checkpoint was trained with? "
                         "--MODEL and --ARCH_PATH choose it)")
        raise CheckpointError("\n".join(lines))
    return state


def load_weights(model, path: str, state: Optional[Dict[str, np.ndarray]] = None) -> None:
    """Load a weights file into `model` safely, with a full report of any mismatch. `state`: the
    file's extract_state_dict(safe_load(path)) when the caller has read it already."""
    if state is None:
        state = extract_state_dict(safe_load(path), path)
    state = match_state_dict(model, state, path)
    model.set_state_dict({k: v.astype(np.float32) if v.dtype == np.float64 else v
                          for k, v in state.items()})


def to_numpy_state(state: Mapping) -> Dict[str, Any]:
    """Paddle tensors -> numpy arrays, so the file is a plain pickle anyone can read safely."""
    out = {}
    for key, value in state.items():
        if hasattr(value, "numpy"):
            value = value.numpy()
        elif isinstance(value, Mapping):
            value = to_numpy_state(value)
        out[key] = value
    return out


def atomic_save(obj: Any, path: str) -> None:
    """Pickle `obj` to `path` so that a kill at any moment leaves either the old file or the
    complete new one: write a temporary file in the same folder, fsync, then rename. A temporary
    left by a killed earlier write of the same path is removed once this write has landed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # temporaries of earlier writes of this file that were killed before their rename
    stale = re.compile(r"\.tmp-[a-z0-9_]{8}" + re.escape(os.path.basename(path)) + "$")  # mkstemp's names
    for name in os.listdir(folder):
        if stale.match(name):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
