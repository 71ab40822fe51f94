"""Process-wide speed settings: CPU threads, MKL's fast path on AMD, and helpers for mixed
precision and `paddle.jit.to_static` training.

Call `configure()` once at start-up, ideally before `import paddle`; it imports Paddle itself
(see "Quiet import" below). Calling it after the import still works.

What it does (measured on a 2-core AMD EPYC with bench/train_step.py, bench/eval.py):

* Threads. Paddle's CPU build computes with Intel MKL (mklml) and oneDNN on an OpenMP pool, and
  defaults to ONE thread. `configure()` uses every CPU this process may run on (affinity mask
  and cgroup quota), divided by the number of training processes on the host. A value the user
  set in MKL_NUM_THREADS, OMP_NUM_THREADS or CPU_NUM (checked in that order) wins.
* Strided views off (FLAGS_use_stride_kernel=0, see PADDLE_FLAGS): attention's head split is
  a transpose; as a strided view every consumer gathers it element by element.
* MKL on AMD. The bundled MKL (2019.0.5) runs its generic SSE code on non-Intel processors
  unless MKL_DEBUG_CPU_TYPE=5 is set, which selects the AVX2 kernels: about 2.6x on one
  thread for a [6400,512]x[512,2048] matmul here. The variable is honoured by MKL up to
  2020.0 only; newer MKLs ignore it (and choose well on their own). A value the user set wins.
* Memory reuse: glibc malloc is told to keep freed memory (`keep_freed_memory`), so the large
  tensors of each step do not page-fault in anew: element-wise ops over big tensors ~5x faster.

* Quiet import. Paddle prints "WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE
  OMP_NUM_THREADS WISELY" when it is imported with OMP_NUM_THREADS > 1 (advice for data
  parallel with OpenBLAS builds; this CPU build uses MKL, and processes here divide the cores
  between them). So configure() does not export OMP_NUM_THREADS: MKL reads MKL_NUM_THREADS, and
  Paddle's OpenMP pool is sized with its own `set_num_threads` right after the import
  (`set_paddle_threads`, also called in every spawned training process). Importing Paddle also
  runs `paddle.utils.cpp_extension`, which warns "No ccache found" (a compiler cache for building
  custom C++ ops, which this project never builds). An OMP_NUM_THREADS the user set is passed on
  untouched.
* Known noise. PADDLE_WARNINGS and PADDLE_LOG_LINES list what Paddle prints that says nothing
  about the user's run ("No ccache found"; on every export and Paddle Inference start, a
  "Tensor do not have 'place' interface" warning per attention layer and a PIR "not support
  input out tensor" log line; in each process of a data-parallel run, a GLOO warning, the flags
  of PADDLE_FLAGS framed as "Modified FLAGS detected", and glog lines of the rendezvous; the
  launcher's "find free ports" goes to the root logger, which run_parallel keeps at WARNING
  meanwhile). `filter_paddle_noise()` (called by configure(), and by the tools
  that never import Paddle) filters the warnings here and, via PYTHONWARNINGS, in child processes;
  `paddle_log_filtered()` drops the log lines Paddle's C++ side writes straight to stderr.

Nothing here changes results beyond the float summation order of threaded GEMMs.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import warnings
from typing import Dict, Optional

# Paddle flags set unless the user set them. FLAGS_use_stride_kernel=0: transpose/reshape make
# contiguous copies at once instead of strided views; the matmul after split-heads then reads a
# plain tensor instead of gathering a strided one, 3-4x faster for attention (same values).
PADDLE_FLAGS = {"FLAGS_use_stride_kernel": "0"}
_THREAD_VARS = ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "CPU_NUM")
_MARK = "MMNAS_RUNTIME_SET"  # names configure() set itself; inherited by the processes it starts
# Paddle's known noise (see "Known noise"): Python warnings by the start of their message ...
PADDLE_WARNINGS = (
    "No ccache found",  # importing paddle.utils.cpp_extension: a compiler cache for custom C++ ops
    "Tensor do not have 'place' interface for pir graph mode",  # paddle.where while exporting
    "Your model will be trained under CPUONLY mode by using GLOO",  # dist.spawn on CPU (--NPROCS)
)
# ... and lines its C++ side (glog) or init_parallel_env write to file descriptor 2, by a part of the line
PADDLE_LOG_LINES = (
    "Paddle static graph(PIR) not support input out tensor",  # paddle.jit.save
    # dist.init_parallel_env in every process of a data-parallel run: the flags this project sets
    # (PADDLE_FLAGS) framed as "modified", and the rendezvous store's glog INFO lines
    "======================= Modified FLAGS detected =======================", "FLAGS(name='FLAGS_",
    "=" * 71, "tcp_store.cc:", "tcp_utils.cc:",
)
_state: Dict[str, object] = {}


# import name -> pip name of the packages every entry point needs (requirements.txt)
REQUIRED_PACKAGES = {"paddle": "paddlepaddle", "numpy": "numpy", "yaml": "pyyaml", "tqdm": "tqdm"}


def require_packages() -> None:
    """Exit (status 2) with one line naming this interpreter and the install command when a required
    package is missing (instead of a ModuleNotFoundError traceback from deep in an import).
    Called by run.py and configure() before anything imports them."""
    import importlib.util
    missing = [pip for name, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(name) is None]
    if missing:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        version = ".".join(map(str, sys.version_info[:3]))
        print(
            f"error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in the Python that "
            f"runs this ({sys.executable}, Python {version}); run it with the interpreter of the project's "
            f"environment (e.g. .venv/bin/python), or install into this one: {sys.executable} -m pip install "
            f"-r {os.path.join(repo, 'requirements.txt')} -e {repo}", file=sys.stderr)
        sys.exit(2)


def usable_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = max(1, min(n, int(quota + 0.5)))
    return max(1, n)


def _cgroup_cpu_quota() -> Optional[float]:
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def cpu_vendor() -> str:
    """'AuthenticAMD', 'GenuineIntel', ... or '' when unknown (non-Linux, ARM)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _positive_int(value: Optional[str]) -> Optional[int]:
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n and n > 0 else None


def user_settings() -> Dict[str, str]:
    """The relevant variables the user set (not those configure() set, here or in a parent)."""
    ours = set(filter(None, os.environ.get(_MARK, "").split(",")))
    names = _THREAD_VARS + ("MKL_DEBUG_CPU_TYPE",) + tuple(PADDLE_FLAGS)
    return {v: os.environ[v] for v in names if v in os.environ and v not in ours}


def thread_count(processes: int = 1, user: Optional[Dict[str, str]] = None) -> int:
    """Threads per process: the user's MKL_NUM_THREADS / OMP_NUM_THREADS / CPU_NUM (first set
    wins), else usable CPUs divided by the processes sharing them (at least 1)."""
    user = user_settings() if user is None else user
    for var in _THREAD_VARS:
        n = _positive_int(user.get(var))
        if n:
            return n
    return max(1, usable_cpus() // max(1, processes))


def configure(processes: int = 1, threads: Optional[int] = None, verbose: bool = False) -> Dict[str, object]:
    """Set thread counts, MKL's code path and Paddle flags for this process and its children.

    processes: how many training processes will share this host's CPUs (e.g. --NPROCS on CPU);
    threads: force a thread count (otherwise `thread_count(processes)`).
    Variables the user set are left alone. Safe to call more than once; returns what is in force.
    """
    require_packages()
    user = user_settings()
    n = int(threads) if threads else thread_count(processes, user)
    ours = []

    def put(name, value, force=False):
        if force or name not in user:
            os.environ[name] = value
            ours.append(name)

    put("MKL_NUM_THREADS", str(n), force=bool(threads))  # OMP_NUM_THREADS: see "Quiet import"
    if cpu_vendor() == "AuthenticAMD":
        put("MKL_DEBUG_CPU_TYPE", "5")  # read by MKL at its first call, so also works after import
    for flag, value in PADDLE_FLAGS.items():
        put(flag, value)  # Paddle reads FLAGS_* from the environment when imported
    os.environ[_MARK] = ",".join(ours)
    malloc = keep_freed_memory() if os.environ.get("MMNAS_MALLOC_KEEP", "1") != "0" else False
    filter_paddle_noise()
    imported_before = "paddle" in sys.modules
    set_paddle_threads(n)  # imports Paddle if needed, then sizes its MKL + OpenMP threads
    if imported_before:  # flags are read from the environment at import; after it, set them directly
        import paddle
        for flag in PADDLE_FLAGS:
            try:
                paddle.set_flags({flag: os.environ[flag].lower() not in ("0", "false")})
            except (ValueError, RuntimeError):
                pass
    _state.update({"threads": n, "processes": processes, "cpus": usable_cpus(), "vendor": cpu_vendor(),
                   "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
                   "flags": {f: os.environ.get(f) for f in PADDLE_FLAGS}, "malloc_keep": malloc,
                   "user_set": sorted(user)})
    if verbose:
        print(f"mmnas.runtime: {describe()}", file=sys.stderr)
    return dict(_state)


def filter_paddle_noise() -> None:
    """Ignore PADDLE_WARNINGS in this process and in the processes it starts (PYTHONWARNINGS is
    read by every new interpreter). Cheap, imports nothing: tools that never import Paddle call
    it instead of configure()."""
    _ignore_paddle_warnings()
    current = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    for message in PADDLE_WARNINGS:
        entry = f"ignore:{message}:UserWarning"  # PYTHONWARNINGS: action:message prefix:category
        if entry not in current:
            current.append(entry)
    os.environ["PYTHONWARNINGS"] = ",".join(current)


def _ignore_paddle_warnings() -> None:
    for message in PADDLE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)


def is_paddle_noise(line: str) -> bool:
    """True for a line of Paddle's known noise (a PADDLE_WARNINGS warning or a PADDLE_LOG_LINES line)."""
    return any(part in line for part in PADDLE_LOG_LINES + PADDLE_WARNINGS)


@contextlib.contextmanager
def paddle_log_filtered():
    """Run the block with PADDLE_WARNINGS ignored (whatever filters the caller has, e.g. pytest's)
    and file descriptor 2 sent to a temporary file, then write its lines back to stderr except
    Paddle's known noise (its C++ logs bypass sys.stderr and the warnings filter). Output of the
    block therefore appears when it ends, also when it raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture, warnings.catch_warnings():
        _ignore_paddle_warnings()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_paddle_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def set_paddle_threads(threads: Optional[int] = None) -> None:
    """Import Paddle without an OMP_NUM_THREADS > 1 of ours in the environment (so it prints no
    warning), then give its MKL and OpenMP `threads` threads (default: thread_count() read from
    the environment, i.e. the MKL_NUM_THREADS configure() exported). Spawned training processes
    call this first: they inherit MKL_NUM_THREADS, and Paddle starts with one OpenMP thread."""
    n = threads or thread_count(user=dict(os.environ))
    placeholder = "paddle" not in sys.modules and "OMP_NUM_THREADS" not in os.environ
    import paddle  # noqa: F401  (sets OMP_NUM_THREADS=1 in os.environ when it is unset)
    if placeholder:
        os.environ.pop("OMP_NUM_THREADS", None)  # Paddle's, not the user's: no limit for child processes
    try:
        from paddle.base import core
        core.set_num_threads(n)
    except (ImportError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31,
                      top_pad: int = 1 << 28) -> bool:
    """Make glibc malloc keep freed blocks for reuse instead of returning them to the OS.

    Paddle's CPU tensors come from malloc. By default every block over 32 MiB is a fresh mmap,
    released on free, so each large op output is page-faulted in again: a ReLU over a
    [256, 100, 2048] tensor spends 85% of its time in page faults (148 ms vs 18 ms here).
    With these thresholds the heap keeps its peak size (the footprint of one step) and reuses
    it. Returns False where there is no glibc (macOS, Windows, musl). Opt out: MMNAS_MALLOC_KEEP=0.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
        ok = libc.mallopt(_M_TOP_PAD, top_pad) == 1 and ok
        return ok
    except (OSError, AttributeError):
        return False


def describe() -> str:
    if not _state:
        return "not configured (Paddle defaults: 1 thread)"
    s = _state
    return (f"{s['threads']} thread(s) on {s['cpus']} usable CPU(s), {s['processes']} process(es); "
            f"MKL_DEBUG_CPU_TYPE={s['MKL_DEBUG_CPU_TYPE']}; flags {s['flags']}; malloc keeps freed memory: "
            f"{s['malloc_keep']}; user-set: {', '.join(s['user_set']) or 'none'}")


# ---- signals around child processes -------------------------------------------------------------

# the signals that stop a run (Ctrl-C, a scheduler's or `timeout`'s SIGTERM, a dropped terminal's
# SIGHUP); engine/interrupt.py handles them
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def hold_stop_signals():
    """Hold STOP_SIGNALS in this thread and in the threads and processes it starts: one that
    comes is delivered once they are released. Returns the previous mask (None where there is
    no pthread_sigmask: Windows). A thread started earlier (numpy's BLAS pool) may still take
    them: hold them first thing (run.py)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Deliver the STOP_SIGNALS held so far (`hold_stop_signals`), now that handlers are set."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held():
    """STOP_SIGNALS held inside the block, e.g. while DataLoader workers start: a forked worker
    inherits the mask and ignores the signals before it releases them (engine/evaluate.py's
    init_loader_worker), so Paddle's C++ SIGTERM handler in the worker never runs."""
    previous = hold_stop_signals()
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def process_pool(workers: int):
    """A pool of `workers` processes (concurrent.futures) that start fresh ("spawn"), not forked
    from this one.

    A fork copies this process's memory with the locks its other threads held at that moment
    (Paddle's OpenMP pool, a progress bar's monitor, a web server, a telemetry sender); a child
    that needs one of them waits for ever. A worker that dies raises BrokenProcessPool here instead
    of leaving the caller waiting for its results. Stop signals held here are released in each
    worker. Ctrl-C or an error in the caller cancels the work not yet started."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=release_stop_signals)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, **({"cancel_futures": True} if sys.version_info >= (3, 9) else {}))
        raise
    pool.shutdown()


# ---- mixed precision and to_static --------------------------------------------------------------

def amp_enabled(cfg) -> bool:
    """cfg.train.amp in ('fp16', 'bf16') and a GPU is in use; AMP is off by default and on CPU."""
    mode = _amp_mode(cfg)
    if mode is None:
        return False
    import paddle
    return paddle.device.get_device().startswith("gpu")


AMP_MODES = {"off": None, "fp16": "float16", "bf16": "bfloat16"}  # train.amp / --AMP -> Paddle dtype


def _amp_mode(cfg) -> Optional[str]:
    """The Paddle dtype of cfg.train.amp (unset = off), None when off."""
    mode = getattr(getattr(cfg, "train", cfg), "amp", None) or "off"
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    return AMP_MODES[mode]


def amp_context(cfg):
    """Context manager for the forward pass (and loss): paddle.amp.auto_cast at O1 with the
    configured dtype when AMP is on, else a no-op. Softmax, LayerNorm, log and the loss stay in
    float32 under O1 (Paddle's black list), matmuls run in fp16/bf16."""
    if not amp_enabled(cfg):
        return contextlib.nullcontext()
    import paddle
    return paddle.amp.auto_cast(enable=True, dtype=_amp_mode(cfg), level="O1")


def make_grad_scaler(cfg):
    """A paddle.amp.GradScaler for fp16 (bf16 needs none: its range is float32's); None otherwise."""
    if not amp_enabled(cfg) or _amp_mode(cfg) != "float16":
        return None
    import paddle
    return paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15)


def clip_grad_norm_(parameters, max_norm: float):
    """paddle.nn.utils.clip_grad_norm_(parameters, max_norm) (L2 norm over all gradients as one
    vector, scale by max_norm / (norm + 1e-6) when that is < 1), faster on CPU: each squared norm
    is one BLAS dot (Paddle's p_norm kernel is ~70x slower: 0.46 s of a 19 s step at batch 64),
    and gradients are rescaled only when clipping applies (on CPU reading the scale costs nothing;
    on GPU the multiply stays unconditional, so there is no host synchronisation). Equal to
    Paddle's to float rounding of the norm (~1e-7 relative). max_norm <= 0 clips nothing.
    Returns the total norm (a tensor)."""
    import paddle
    parameters = list(parameters)
    grads = [_grad(p) for p in parameters if _grad(p) is not None]
    if not grads:
        return paddle.to_tensor(0.0)
    flat = [g.detach().reshape([-1]) for g in grads]
    squares = [paddle.matmul(f, f).astype("float32") for f in flat]
    total = paddle.sqrt(paddle.add_n([s.reshape([1]) for s in squares])).reshape([])
    if max_norm <= 0:  # train.grad_clip: 0 = no clipping (the GQA recipe); the norm is still logged
        return total
    coef = paddle.clip(max_norm / (total + 1e-6), max=1.0)
    if not grads[0].place.is_cpu_place() or float(coef) < 1.0:  # float(): free on CPU, skipped on GPU
        with paddle.no_grad():
            for g in grads:
                g.multiply_(coef.astype(g.dtype))
    return total


def _grad(p):
    """The gradient tensor itself, writable in place (`grad_` in Paddle 3; `grad` before)."""
    return p.grad_ if hasattr(p, "grad_") else p.grad


def clip_and_step(optimizer, scaler, params, grad_clip: float, clip=None):
    """After the backward pass(es): unscale fp16 gradients (when `scaler` is given), clip them by
    global norm (`clip`, default clip_grad_norm_ above), take the optimizer step and clear the
    gradients. Returns the gradient norm as a tensor (no host synchronisation)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    norm = (clip or clip_grad_norm_)(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.clear_grad()
    return norm


def maybe_to_static(model, cfg):
    """paddle.jit.to_static(model) when cfg.train.to_static (--TO_STATIC) is true. Off by default:
    on CPU it measured slower (2.35 vs 3.63 samples/s, MMNasNet-small, batch 64, n = 100, same
    load), because the static graph uses Paddle's own Linear, LayerNorm and dropout ops instead of
    the eager CPU paths in mmnas/ops/fast.py. Worth measuring on a GPU (bench/train_step.py
    --to-static). The training loop then runs whole sub-batches (no box-count pieces)."""
    train = getattr(cfg, "train", cfg)
    if not getattr(train, "to_static", False):
        return model
    import paddle
    return paddle.jit.to_static(model, full_graph=True)
