"""The checkpoint file format: reading weights safely, checking them against a model and their
digest, and the one atomic writer every file the project writes goes through (atomic_write).

`.pdparams` / `.pdopt` / `.pkl` files are pickles, and a pickle can run any code when it is
loaded. We never hand a file to `pickle.load` as is: `safe_load` uses an unpickler that can
only build containers, numbers, strings and numpy arrays, and refuses anything else by name.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import pickle
import pickletools
import shutil
import socket
import tempfile
import warnings
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional

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

# What atomic_save writes after the pickle: DIGEST_MARK, 64 hex digits of its SHA-256, "\n".
DIGEST_MARK = b"\n#mmnas-sha256:"
_DIGEST_TRAILER = len(DIGEST_MARK) + 64 + 1

# Paddle's own bookkeeping entry in saved state dicts: not a parameter.
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_WRAPPER_PREFIXES = ("_layers.", "module.")


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


class WriteError(RuntimeError):
    """A file the run must write cannot be written (disk full, read-only, permission denied);
    the message names the path and what to change."""


def write_error(path: str, error: OSError, flag: str = "") -> WriteError:
    """One sentence for an OSError met while writing `path`; `flag` names the folder option
    (e.g. --CKPT_DIR) that moves it elsewhere."""
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable"
    else:
        fix = "check the folder"
    where = f" or choose another {flag}" if flag else " or write elsewhere"
    return WriteError(f"cannot write {path}: {reason}; {fix}{where}")


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
    data = _checked_digest(data, path)
    if data[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a zip archive (a PyTorch checkpoint?). Convert it first with "
            f"`python tools/convert_openvqa_ckpt.py {path} out.pdparams`")
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {_one_line(e)}") from None
    except (Exception, RecursionError) as e:
        # a damaged file can make the unpickler fail in many ways: a length field read as a
        # huge size (MemoryError, OverflowError), bad arguments to numpy's reconstruction
        # (ValueError, TypeError), deep nesting (RecursionError), a stray opcode (KeyError ...)
        raise CheckpointError(f"{path} is not a readable weights file (truncated, damaged or not a "
                              f"pickle): {type(e).__name__}: {_one_line(e)[:200]}") from None


def _checked_digest(data: bytes, path: str) -> bytes:
    """The pickle part of a file atomic_save wrote, after checking it against the digest at its
    end; a file without a digest (released weights, other tools' files) is returned whole."""
    trailer = data[-_DIGEST_TRAILER:]
    if len(data) <= _DIGEST_TRAILER or not (trailer.startswith(DIGEST_MARK) and trailer.endswith(b"\n")):
        return data
    payload = data[:-_DIGEST_TRAILER]
    if hashlib.sha256(payload).hexdigest().encode("ascii") != trailer[len(DIGEST_MARK):-1]:
        raise CheckpointError(f"{path} is damaged: its bytes no longer match the SHA-256 digest written with "
                              f"it (a changed bit on the disk, in memory or in a copy); use another epoch's "
                              f"checkpoint or copy the file again.")
    return payload


def _check_opcodes(data: bytes) -> None:
    """Walk the pickle's opcodes once before unpickling: a damaged length field then fails here,
    and a memo index far beyond the opcodes seen so far (which would make the unpickler allocate
    and zero a memo table of that size: gigabytes, tens of seconds) is refused."""
    with warnings.catch_warnings():  # a damaged text opcode can make codecs warn about escapes
        warnings.simplefilter("ignore", DeprecationWarning)
        for count, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(data))):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= count:
                raise pickle.UnpicklingError(f"memo index {arg} at opcode {count}: the file is damaged")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


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
        if not isinstance(key, str):
            raise CheckpointError(f"{path} has a key {key!r} that is not a parameter name")
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        try:
            array = np.asarray(value)
        except Exception:  # ragged nested lists and the like
            array = None
        if array is None or array.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: entry {key} holds a {type(value).__name__}, not an array of numbers")
        state[key] = array
    return state


# What a shape mismatch in one dimension of these keys means for the user.
_ANSWERS = ("the answer vocabulary size differs (A, this run's vs the file's): the checkpoint was "
            "trained with another answer dictionary; use the data (--DATA_ROOT) and data.answer_dict "
            "it was trained with")
_DIM_MEANINGS = {
    ("embedding.weight", 0): "the question vocabulary size differs (T): the token vocabulary was built "
                             "from different question files than the checkpoint's, e.g. VG questions "
                             "absent or present when the vocabulary was built",
    ("embedding.weight", 1): "the word vector width differs (model.word_embed): the checkpoint was "
                             "trained with another config; --MODEL chooses it",
    ("proj.weight", 0): "the fused feature width differs (model.flat_out, which follows the hidden "
                        "size): the checkpoint was trained with another model size; --MODEL chooses it",
    ("proj.weight", 1): _ANSWERS,
    ("proj.bias", 0): _ANSWERS,
}


def mismatch_meaning(key: str, expected, found) -> str:
    """What a mis-shaped `key` means: one clause per differing dimension ('' if unknown)."""
    if len(expected) != len(found):
        return ""
    meanings = [f"dimension {dim} ({expected[dim]} vs {found[dim]}): {_DIM_MEANINGS[key, dim]}"
                for dim in range(len(expected))
                if expected[dim] != found[dim] and (key, dim) in _DIM_MEANINGS]
    return "; ".join(meanings)


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

    aliases = {k for keys in by_tensor.values() for k in keys[1:]}  # report each tensor once
    missing = [k for k in own if k not in state and k not in aliases]
    unexpected = [k for k in state if k not in own]
    misshaped = [(k, tuple(own[k].shape), tuple(state[k].shape)) for k in own
                 if k in state and k not in aliases and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or misshaped:
        raise CheckpointError(mismatch_report(path, missing, unexpected, misshaped))
    return state


MISMATCH_LISTED = 3  # keys named per kind in a mismatch report (a model has hundreds)


def mismatch_report(path: str, missing, unexpected, misshaped) -> str:
    """The error for weights that do not fit: a first line saying what to do (from the first
    mis-shaped key whose meaning is known, else: choose the config the file was trained with),
    then how many keys are missing, unexpected and mis-shaped, naming at most MISMATCH_LISTED each."""
    explained = [(key, expected, found, mismatch_meaning(key, expected, found)) for key, expected, found in misshaped]
    explained.sort(key=lambda row: not row[3])  # the keys that say what differs come first
    lead = explained[0][3] if explained and explained[0][3] else (
        "it was trained with another config or genotype; give the one it was trained with "
        "(--MODEL, and --ARCH_PATH for a searched genotype)")
    lines = [f"{path} does not fit the model: {lead}."]
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = ", ..." if len(keys) > MISMATCH_LISTED else ""
            lines.append(f"  {kind} keys ({len(keys)}): {', '.join(keys[:MISMATCH_LISTED])}{more}")
    for key, expected, found, meaning in explained[:MISMATCH_LISTED]:
        meaning = f" -> {meaning}" if meaning and meaning != lead else ""
        lines.append(f"  {key}: model expects {list(expected)}, file has {list(found)}{meaning}")
    if len(explained) > MISMATCH_LISTED:
        lines.append(f"  ... and {len(explained) - MISMATCH_LISTED} more mis-shaped keys")
    return "\n".join(lines)


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


def _host_tag() -> str:
    """This machine's name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def atomic_write(path: str, write: Callable[[BinaryIO], None], flag: str = "") -> None:
    """The one way the project writes a file: `write(f)` fills a temporary file in the same
    folder, which is fsynced and renamed over `path`, so that a kill at any moment leaves either
    the old file or the complete new one.

    The temporary's name carries this host and pid (`.tmp-<host>-<pid>-<random><file name>`):
    after the rename, temporaries of this same file left by *dead* processes of this host (a
    killed earlier write) are removed; a temporary of a live process, or of another host, is
    never touched. An OSError (disk full, read-only folder; PIL and numpy raise it too) becomes
    a WriteError naming `path` (and `flag`, the option that moves it), with the temporary
    removed and the old file intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".tmp-{_host_tag()}-{os.getpid()}-"
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=os.path.basename(path), dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e, flag) from None
        raise
    remove_dead_temporaries(folder, os.path.basename(path))


def write_text_atomic(text: str, path: str, flag: str = "") -> None:
    """`text` as UTF-8 at `path`, through atomic_write."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), flag)


def write_json_atomic(obj: Any, path: str, flag: str = "--RESULTS_DIR", indent: Optional[int] = None) -> None:
    """`obj` as JSON at `path`, through atomic_write."""
    write_text_atomic(json.dumps(obj, indent=indent), path, flag)  # dumps: the C encoder


def copy_file_atomic(source: str, path: str, flag: str = "") -> None:
    """The bytes of `source` (a file a library wrote somewhere temporary) at `path`, through atomic_write."""
    def write(f):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    atomic_write(path, write, flag)


class _Digesting:
    """A binary file wrapper that feeds every byte written into a SHA-256."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def atomic_save(obj: Any, path: str, flag: str = "") -> None:
    """Pickle `obj` to `path` (atomic_write) followed by DIGEST_MARK and the SHA-256 of the
    pickle: `safe_load` refuses the file if one bit of it changed. Unpicklers stop at the
    pickle's end and never read the digest, so paddle.load still reads the file."""
    def write(f):
        digesting = _Digesting(f)
        pickle.dump(obj, digesting, protocol=4)
        f.write(DIGEST_MARK + digesting.sha256.hexdigest().encode("ascii") + b"\n")

    atomic_write(path, write, flag)


def remove_dead_temporaries(folder: str, name: str) -> None:
    """Remove `.tmp-<this host>-<pid>-XXXXXXXX<name>` files in `folder` whose pid is dead."""
    stale = re.compile(r"\.tmp-" + re.escape(_host_tag()) + r"-(\d+)-[a-z0-9_]{8}" + re.escape(name) + "$")
    for entry in os.listdir(folder):
        match = stale.match(entry)
        if match and not _process_alive(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def save_checkpoint(params: Any, params_path: str, extra: Any, extra_path: str, flag: str = "") -> None:
    """Write a checkpoint's weights and optimizer files (each atomically). If the second
    write fails, the first is removed again, so an epoch has both files or neither."""
    existed = os.path.exists(params_path)
    atomic_save(params, params_path, flag)
    try:
        atomic_save(extra, extra_path, flag)
    except BaseException:
        if not existed:
            try:
                os.remove(params_path)
            except OSError:
                pass
        raise
