"""Faults injected for real into the engine: Ctrl-C (SIGINT to a real run.py, at random points),
SIGKILL, two runs of one VERSION at once, a full or read-only filesystem, and damaged checkpoint
files. Each subprocess run trains a very small model on a few dozen synthetic questions, and
every wait has a timeout, so a hang fails the test instead of stalling it.
"""
import errno
import os
import pickle
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

from mmnas import checkpoint_files
from mmnas.config import load_config
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.engine import train as train_mod
from mmnas.checkpoint_files import (CheckpointError, WriteError, atomic_save, extract_state_dict,
                                     match_state_dict, safe_load)
from mmnas.engine.evaluate import write_json_atomic
from mmnas.engine.interrupt import InterruptGuard
from mmnas.engine.logger import RunLogger
from mmnas.engine.checkpoint import ckpt_paths
from mmnas.engine.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "run.py")
TINY_YML = os.path.join(REPO, "configs", "vqa", "mmnasnet_tiny.yml")
BATCH = 8
EPOCHS = 3
SEED = 7  # not the config's default: a resume that forgot it would diverge
TIMEOUT = 300  # seconds any single run may take before the test fails

INTERRUPT_LINE = re.compile(r"interrupted (by (?P<signal>SIGTERM|SIGHUP) )?(at epoch \d+ (step \d+|\([a-z ]+\))|before the first epoch started); "
                            r"nothing (partial )?was saved; (resume with: (?P<cmd>.+)|nothing to resume from|"
                            r"run the same command again to start|"
                            r"every epoch is saved, the last in \S+; nothing is left to (train|search))")


# ----------------------------------------------------------------------------- fixtures, helpers

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic data (60 train questions: 7 steps of 8 per epoch) and a very small model with dropout."""
    root = tmp_path_factory.mktemp("faults")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=20, n_val_images=6, n_test_images=4, n_vg_images=4,
                       questions_per_image=3, seed=1, min_boxes=10, max_boxes=20)
    yml = root / "tiny_faults.yml"
    yml.write_text(
        f"base: {TINY_YML}\n"
        "model:\n"
        "  hidden_size: 32\n  heads: 4\n  rel_head_width: 16\n  rel_size: 16\n"
        "  flat_mlp: 32\n  flat_out: 64\n  dropout: 0.1\n"
        "  genotype: {enc: [SA, FFN], dec: [GA, RSA, FFN]}\n"
        "data:\n  split: train\n  num_workers: 0\n"
        "train:\n  max_epoch: 1\n  eval_every_epoch: false\n  eval_batch_size: 16\n")
    return SimpleNamespace(root=root, data_root=str(data_root), yml=str(yml))


def run_args(world, folder, version, *extra):
    """A complete run.py command line; the flags that used to be missing from the printed resume
    command (--SEED, --BS, --DATA_ROOT, --CKPT_DIR, --RESULTS_DIR) all differ from the defaults."""
    return [sys.executable, RUN_PY, "--RUN=train", f"--MODEL={world.yml}", f"--VERSION={version}",
            f"--DATA_ROOT={world.data_root}", f"--CKPT_DIR={folder / 'ckpt'}", f"--RESULTS_DIR={folder / 'results'}",
            f"--SEED={SEED}", f"--BS={BATCH}", f"--MAX_EPOCH={EPOCHS}", *extra]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, even if pytest runs in the background


class Run:
    """A run.py subprocess in its own process group (so a signal can go to it and its loader
    workers, as Ctrl-C in a terminal does), with its output collected as it comes."""

    def __init__(self, argv, cwd):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, preexec_fn=_default_sigint)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream, buf):
        for chunk in iter(lambda: stream.read(1), ""):
            buf.append(chunk)

    @property
    def stdout(self):
        return "".join(self.out)

    @property
    def stderr(self):
        return "".join(self.err)

    def wait_for(self, pattern, timeout=TIMEOUT):
        deadline = time.time() + timeout
        while not re.search(pattern, self.stderr + self.stdout):
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if re.search(pattern, self.stderr + self.stdout):
                    return
                pytest.fail(f"run ended ({self.proc.returncode}) before {pattern!r}:\n{self.stderr[-3000:]}")
            if time.time() > deadline:
                self.kill()
                pytest.fail(f"no {pattern!r} within {timeout}s:\n{self.stderr[-3000:]}")
            time.sleep(0.02)

    def interrupt(self, signum=signal.SIGINT):
        os.killpg(self.proc.pid, signum)  # the main process and its loader workers (and spawned processes)

    def finish(self, timeout=TIMEOUT):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"run did not end within {timeout}s:\n{self.stderr[-3000:]}")
        for r in self.readers:
            r.join(timeout=10)
        return self.proc.returncode

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def run_to_end(argv, cwd):
    run = Run(argv, cwd)
    code = run.finish()
    return code, run.stdout, run.stderr


def checkpoint_epochs(folder, version):
    """Epochs with a complete pair of files; fails on a half pair or a left-over temporary."""
    ckpt = os.path.join(folder, "ckpt", f"ckpt_{version}")
    names = [n for n in os.listdir(ckpt) if n != ".run.lock"] if os.path.isdir(ckpt) else []
    assert not [n for n in names if n.startswith(".tmp")], names
    params = {int(n[5:-9]) for n in names if n.endswith(".pdparams")}
    opts = {int(n[5:-6]) for n in names if n.endswith(".pdopt")}
    assert params == opts, f"half a checkpoint in {ckpt}: {sorted(names)}"
    return sorted(params)


def assert_same_state(a, b, what):
    assert sorted(a) == sorted(b), what
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), rtol=0, atol=1e-6,
                                   err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted run every interrupted-and-resumed run must end equal to."""
    folder = tmp_path_factory.mktemp("reference")
    code, out, err = run_to_end(run_args(world, folder, "ref"), folder)
    assert code == 0, err[-3000:]
    params, opt = ckpt_paths(str(folder / "ckpt"), "ref", EPOCHS)
    return SimpleNamespace(params=safe_load(params), opt=safe_load(opt)["optimizer"])


# ----------------------------------------------------------------------------- Ctrl-C

def the_interrupt_line(stderr, stdout="", signum=signal.SIGINT):
    """The one line a run stopped by `signum` printed; no traceback, Python's or Paddle's C++ one
    (Paddle's SIGTERM handler prints "Termination signal" to stdout)."""
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1, stderr[-3000:]
    match = INTERRUPT_LINE.fullmatch(lines[0].strip())
    assert match, lines[0]
    assert match.group("signal") == (None if signum == signal.SIGINT else signal.Signals(signum).name), lines[0]
    assert "Traceback" not in stderr and "EnforceNotMet" not in stderr and "Error" not in stderr, stderr[-3000:]
    assert "Termination signal" not in stdout and "C++ Traceback" not in stdout, stdout[-3000:]
    return match


@pytest.mark.parametrize("signum, case", [(signal.SIGINT, 0), (signal.SIGINT, 1), (signal.SIGINT, 2),
                                          (signal.SIGINT, 3), (signal.SIGTERM, 4), (signal.SIGHUP, 5)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_ctrl_c_at_a_random_moment_then_the_printed_command_resumes_exactly(world, reference, tmp_path, signum,
                                                                            case):
    """Ctrl-C (SIGINT), a scheduler's SIGTERM or a dropped terminal's SIGHUP to the whole process
    group at a random moment of epoch 2 (most of a step is backward; cases 3 and 4 read batches
    with 2 loader workers): exit 128 + the signal's number, one line naming the signal, no
    traceback, only complete checkpoints. Pasting the printed command (parsed with shlex, run
    from another folder) ends with the uninterrupted run's weights and Adam moments."""
    rng = random.Random(1000 + case)
    extra = ["--NW=2"] if case in (3, 4) else []
    run = Run(run_args(world, tmp_path, "cc", *extra), tmp_path)
    # a random moment of epoch 2's cycle as this machine runs it (the time from the start of epoch
    # 1 to that of epoch 2: its steps, the loader, the checkpoint write, val), so the run with 3
    # epochs is still going however fast the machine is
    run.wait_for(rf"epoch 1/{EPOCHS}:\s+0%")
    cycle_start = time.time()
    run.wait_for(rf"epoch 2/{EPOCHS}:\s+0%")
    time.sleep(rng.uniform(0.0, 0.9) * (time.time() - cycle_start))
    run.interrupt(signum)
    code = run.finish()
    assert code == 128 + signum, run.stderr[-3000:]
    match = the_interrupt_line(run.stderr, run.stdout, signum)
    done = checkpoint_epochs(tmp_path, "cc")
    for e in done:
        params, opt = ckpt_paths(str(tmp_path / "ckpt"), "cc", e)
        assert safe_load(opt)["epoch"] == e and safe_load(params)
    if match.group("cmd") is None:  # before the first checkpoint, or after the last one
        if done:
            assert max(done) == EPOCHS and "nothing is left to train" in match.group(0), match.group(0)
            params, opt = ckpt_paths(str(tmp_path / "ckpt"), "cc", EPOCHS)
            assert_same_state(reference.params, safe_load(params), "weights")
        else:
            assert "nothing to resume from" in match.group(0), match.group(0)
        return
    argv = shlex.split(match.group("cmd"))
    assert argv[0] == "python" and f"--CKPT_E={max(done)}" in argv and f"--SEED={SEED}" in argv
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = run_to_end([sys.executable] + argv[1:], elsewhere)
    assert code == 0, err[-3000:]
    assert "resumed from" in out
    params, opt = ckpt_paths(str(tmp_path / "ckpt"), "cc", EPOCHS)
    assert_same_state(reference.params, safe_load(params), "weights")
    assert_same_state(reference.opt, safe_load(opt)["optimizer"], "optimizer state")


def test_ctrl_c_before_the_first_checkpoint_has_nothing_to_resume(world, tmp_path):
    run = Run(run_args(world, tmp_path, "early"), tmp_path)
    run.wait_for(rf"epoch 1/{EPOCHS}:\s+0%")  # the bar starts with the epoch (in a pipe it prints no step lines)
    run.interrupt()
    assert run.finish() == 130, run.stderr[-3000:]
    match = the_interrupt_line(run.stderr)
    assert match.group(0).startswith("interrupted at epoch 1 step ") and match.group("cmd") is None
    assert checkpoint_epochs(tmp_path, "early") == []


def _small_cfg(world, folder, version, **train_overrides):
    cfg = load_config(world.yml)
    cfg.data.data_root = world.data_root
    cfg.data.cache_dir = str(folder / "results" / "cache")
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(folder / "results"), str(folder / "ckpt"), version
    cfg.train.batch_size, cfg.train.seed = BATCH, SEED
    for key, value in train_overrides.items():
        setattr(cfg.train, key, value)
    return cfg


def test_ctrl_c_during_checkpoint_save_completes_the_pair(world, tmp_path, monkeypatch):
    """A real SIGINT arrives between the weights file and the optimizer file of epoch 2: it waits
    until both are written, then the run stops and offers to resume from epoch 2."""
    from mmnas import checkpoint_files
    from mmnas.engine import checkpoint
    real = checkpoint.save_checkpoint
    calls = []

    def save_with_sigint_between(params, params_path, extra, extra_path, flag=""):
        calls.append(params_path)
        if len(calls) == 2:
            checkpoint_files.atomic_save(params, params_path, flag)
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode: inside the save
            checkpoint_files.atomic_save(extra, extra_path, flag)
            return
        real(params, params_path, extra, extra_path, flag)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_with_sigint_between)
    cfg = _small_cfg(world, tmp_path, "save", max_epoch=3)
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert message.startswith("interrupted at epoch 2 (after saving its checkpoint); nothing partial was saved; "
                              "resume with: "), message
    assert "--CKPT_E=2" in message
    assert checkpoint_epochs(tmp_path, "save") == [1, 2]
    assert safe_load(ckpt_paths(cfg.ckpt_dir, "save", 2)[1])["epoch"] == 2


def _ctrl_c_in_val_of_epoch(world, tmp_path, monkeypatch, version, epoch, max_epoch):
    """Train with a real SIGINT as val of `epoch` starts; returns (cfg, the interrupt line)."""
    real = train_mod.evaluate
    calls = []

    def evaluate_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate_interrupted)
    cfg = _small_cfg(world, tmp_path, version, max_epoch=max_epoch, eval_every_epoch=True)
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert INTERRUPT_LINE.fullmatch(message), message
    return cfg, message


def test_ctrl_c_during_validation_keeps_the_new_checkpoint(world, tmp_path, monkeypatch):
    _, message = _ctrl_c_in_val_of_epoch(world, tmp_path, monkeypatch, "val", epoch=1, max_epoch=2)
    assert message.startswith("interrupted at epoch 1 (evaluating on val after its checkpoint); "), message
    assert "--CKPT_E=1" in message
    assert checkpoint_epochs(tmp_path, "val") == [1]


def test_ctrl_c_during_the_last_epochs_validation_offers_no_resume(world, tmp_path, monkeypatch):
    """After the last epoch's checkpoint there is nothing to resume: a resume command would be
    refused (--CKPT_E >= --MAX_EPOCH), so the line says where the last checkpoint is instead."""
    cfg, message = _ctrl_c_in_val_of_epoch(world, tmp_path, monkeypatch, "last", epoch=2, max_epoch=2)
    last = ckpt_paths(cfg.ckpt_dir, "last", 2)[0]
    assert message == (f"interrupted at epoch 2 (evaluating on val after its checkpoint); nothing partial "
                       f"was saved; every epoch is saved, the last in {last}; nothing is left to train")
    assert checkpoint_epochs(tmp_path, "last") == [1, 2]


def test_interrupt_guard_defers_and_keeps_an_ignored_sigint_ignored():
    guard = InterruptGuard()
    with guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                finished = True  # reached: the signal waited for the end of the block
        assert finished and guard.requested
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptGuard() as ignored:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert not ignored.requested and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- resume settings

def test_resume_without_seed_takes_it_from_the_checkpoint_and_refuses_a_conflicting_flag(world, tmp_path):
    first = run_args(world, tmp_path, "rs")
    first[first.index(f"--MAX_EPOCH={EPOCHS}")] = "--MAX_EPOCH=1"
    code, _, err = run_to_end(first, tmp_path)
    assert code == 0, err[-3000:]
    base = [sys.executable, RUN_PY, "--RUN=train", f"--MODEL={world.yml}", "--RESUME=True", "--CKPT_V=rs",
            "--CKPT_E=1", f"--MAX_EPOCH={EPOCHS}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
            f"--RESULTS_DIR={tmp_path / 'results'}"]
    for flag, saved in (("--SEED=8", f"train.seed={SEED}"), ("--BS=16", f"train.batch_size={BATCH}"),
                        ("--ACCU=2", "train.accu=1")):
        code, _, err = run_to_end(base + [flag], tmp_path)
        assert code == 2, err[-3000:]
        assert f"error: {flag} conflicts with {tmp_path / 'ckpt' / 'ckpt_rs' / 'epoch1.pdopt'}, which was " \
               f"trained with {saved}; drop {flag.split('=')[0]}" in err, err[-3000:]
        assert "Traceback" not in err
    # no --SEED, --BS, --DATA_ROOT: all come back from the checkpoint
    code, out, err = run_to_end(base, tmp_path)
    assert code == 0, err[-3000:]
    assert f"train.seed={SEED} (was 888)" in err and f"train.batch_size={BATCH}" in err and "data.data_root=" in err
    assert f"epoch {EPOCHS}/{EPOCHS}" in out
    opt = safe_load(ckpt_paths(str(tmp_path / "ckpt"), "rs", EPOCHS)[1])
    assert opt["seed"] == SEED and opt["config"]["train"]["batch_size"] == BATCH


def test_engine_refuses_a_resume_whose_seed_differs(world, tmp_path):
    """train() called directly (no command line to restore settings) refuses rather than diverges."""
    cfg = _small_cfg(world, tmp_path, "seed", max_epoch=1)
    train(cfg, progress=False)
    again = _small_cfg(world, tmp_path, "seed", max_epoch=2)
    again.train.seed = SEED + 1
    again.resume, again.ckpt_version, again.ckpt_epoch = True, "seed", 1
    with pytest.raises(train_mod.TrainingError, match=r"train\.seed: the checkpoint has 7, this run 8"):
        train(again, progress=False)


# ----------------------------------------------------------------------------- run folder ownership

def test_a_second_run_of_the_same_version_is_refused_and_a_killed_run_leaves_no_stuck_lock(world, tmp_path):
    long_run = run_args(world, tmp_path, "own")
    long_run[long_run.index(f"--MAX_EPOCH={EPOCHS}")] = "--MAX_EPOCH=200"
    owner = Run(long_run, tmp_path)
    try:
        owner.wait_for(r"epoch 1/200:\s+0%")
        # the same VERSION, train or search, same folders or only the same log: refused at once
        for run, folders in (("train", []), ("search", []),
                             ("train", [f"--CKPT_DIR={tmp_path / 'other_ckpt'}"])):
            argv = run_args(world, tmp_path, "own", f"--RUN={run}", *folders)
            argv.remove("--RUN=train")
            code, out, err = run_to_end(argv, tmp_path)
            assert code == 2, err[-3000:]
            lines = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(lines) == 1, err[-3000:]
            what = "the log " if folders else "the run folder "
            assert lines[0].startswith(f"error: {what}"), lines[0]
            assert (f"is in use by another run (pid {owner.proc.pid} on {socket.gethostname()}, started "
                    in lines[0]), lines[0]
            assert "--VERSION=own" in lines[0] and "--MAX_EPOCH=200" in lines[0]
            assert "Traceback" not in err and "saved" not in out
        assert not (tmp_path / "other_ckpt" / "ckpt_own" / "epoch1.pdparams").exists()
    finally:
        owner.proc.send_signal(signal.SIGKILL)
        owner.finish()
    assert owner.proc.returncode == -signal.SIGKILL
    # the kernel dropped the lock with its process: the next run of that VERSION starts, and
    # its data-parallel processes do not wait on the lock their parent holds
    argv = run_args(world, tmp_path, "own", "--NPROCS=2", "--OVERWRITE=True")  # the killed run may have saved epochs
    argv[argv.index(f"--MAX_EPOCH={EPOCHS}")] = "--MAX_EPOCH=1"
    code, out, err = run_to_end(argv, tmp_path)
    assert code == 0, err[-3000:]
    assert "epoch 1/1: loss" in out and "saved" in out


CONCURRENT_WRITER = r"""
import sys
import numpy as np
from mmnas.checkpoint_files import atomic_save
value = float(sys.argv[2])
for _ in range(40):
    atomic_save({"w": np.full(1 << 19, value, dtype=np.float32)}, sys.argv[1])
"""


def test_concurrent_writers_of_one_file_never_remove_each_others_temporaries(tmp_path):
    """Two processes save the same path 40 times each: before, one's cleanup deleted the
    other's temporary mid-write and the other crashed."""
    path = str(tmp_path / "epoch1.pdparams")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, path, str(v)], env=env,
                              stderr=subprocess.PIPE, text=True) for v in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err[-3000:]
    assert float(safe_load(path)["w"][0]) in (1.0, 2.0)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []


def test_atomic_save_removes_only_dead_processes_temporaries(tmp_path):
    from mmnas.checkpoint_files import _host_tag
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _host_tag()
        names = {"dead": f".tmp-{host}-{dead.pid}-abcd1234epoch1.pdparams",
                 "live": f".tmp-{host}-{live.pid}-abcd1234epoch1.pdparams",
                 "other_host": f".tmp-{host}x-{dead.pid}-abcd1234epoch1.pdparams",
                 "other_file": f".tmp-{host}-{dead.pid}-abcd1234epoch2.pdparams"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        atomic_save({"w": np.ones(3, np.float32)}, str(tmp_path / "epoch1.pdparams"))
        left = set(os.listdir(tmp_path))
        assert names["dead"] not in left
        assert {names["live"], names["other_host"], names["other_file"]} <= left
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- full / read-only disk

def test_disk_full_while_saving_keeps_the_previous_checkpoint(world, tmp_path, mount_tmpfs):
    first = run_args(world, tmp_path, "full")
    first[first.index(f"--MAX_EPOCH={EPOCHS}")] = "--MAX_EPOCH=1"
    code, _, err = run_to_end(first, tmp_path)
    assert code == 0, err[-3000:]
    src = tmp_path / "ckpt" / "ckpt_full"
    files = {n: (src / n).read_bytes() for n in ("epoch1.pdparams", "epoch1.pdopt")}
    # a filesystem with room for epoch 1 and a little more, not for epoch 2's weights
    full = mount_tmpfs(tmp_path / "full", sum(len(b) for b in files.values()) + 256 * 1024)
    (full / "ckpt_full").mkdir()
    for name, data in files.items():
        (full / "ckpt_full" / name).write_bytes(data)
    argv = [sys.executable, RUN_PY, "--RUN=train", f"--MODEL={world.yml}", "--RESUME=True", "--CKPT_V=full",
            "--CKPT_E=1", "--MAX_EPOCH=2", f"--CKPT_DIR={full}", f"--RESULTS_DIR={tmp_path / 'results'}"]
    code, out, err = run_to_end(argv, tmp_path)
    assert code == 2, err[-3000:]
    target = full / "ckpt_full" / "epoch2.pdparams"
    assert (f"error: cannot write {target}: No space left on device; free some space or choose another "
            f"--CKPT_DIR") in err, err[-3000:]
    assert "Traceback" not in err
    # vocab.json is rewritten when the run starts (it fits); the lock and it aside, only epoch 1 is there
    assert sorted(n for n in os.listdir(full / "ckpt_full")
                  if not n.startswith(".run") and n != "vocab.json") == sorted(files)
    for name, data in files.items():
        assert (full / "ckpt_full" / name).read_bytes() == data


def test_read_only_results_or_checkpoint_folder_is_one_sentence(world, tmp_path, mount_tmpfs):
    read_only = mount_tmpfs(tmp_path / "ro", "1m", read_only=True)
    for flag, path in (("--RESULTS_DIR", read_only / "log" / ".log_run_ro.lock"),
                       ("--CKPT_DIR", read_only / "ckpt_ro" / ".run.lock")):
        argv = run_args(world, tmp_path, "ro", f"{flag}={read_only}")
        code, out, err = run_to_end(argv, tmp_path)
        assert code == 2, err[-3000:]
        assert f"error: cannot write {path}: Read-only file system; make the folder writable or choose " \
               f"another {flag}" in err, err[-3000:]
        assert "Traceback" not in err


def _fill(folder):
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_results_and_log_writers_on_a_full_disk(tmp_path, mount_tmpfs):
    full = mount_tmpfs(tmp_path / "full", "64k")
    (full / "cache").mkdir()
    (full / "log").mkdir()
    _fill(full)
    path = full / "cache" / "result_run_x.json"
    with pytest.raises(WriteError, match=f"cannot write {re.escape(str(path))}: No space left on device; "
                                         f"free some space or choose another --RESULTS_DIR"):
        write_json_atomic([{"question_id": i, "answer": "yes" * 50} for i in range(2000)], str(path))
    assert [n for n in os.listdir(full / "cache")] == []
    logger = RunLogger(str(full), "x", use_vdl=False)
    with pytest.raises(WriteError, match="log_run_x.txt: No space left on device"):
        logger.text("x" * (256 * 1024))


# ----------------------------------------------------------------------------- damaged weights files

def _sample_pickles():
    rng = np.random.RandomState(0)
    state = OrderedDict([("embedding.weight", rng.randn(20, 8).astype(np.float32)),
                         ("proj.weight", rng.randn(8, 5).astype(np.float32)),
                         ("proj.bias", np.zeros(5, np.float32)), ("steps", np.int64(7))])
    opt = {"optimizer": {"param:proj.weight_moment1_0": rng.randn(8, 5), "LR_Scheduler": {"last_lr": 1e-4}},
           "epoch": 3, "seed": 7, "config": {"train": {"batch_size": 64, "betas": [0.9, 0.98]}}}
    return [pickle.dumps(obj, protocol=p) for obj in (state, {"state_dict": state}, opt) for p in (2, 4)]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # truncated
        return data[:rng.randrange(len(data))]
    if kind == 1:  # a few bytes flipped
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 2:  # bytes replaced by random ones
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 3:  # random bytes inserted
        at = rng.randrange(len(data))
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2048)))  # noise


HUGE_LENGTHS = [
    b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 63 - 1) + b"ab",  # BINBYTES8 of 2^63 bytes
    b"\x80\x04\x8d" + struct.pack("<Q", 2 ** 62) + b"ab",  # BINUNICODE8
    b"\x80\x04\x96" + struct.pack("<Q", 2 ** 62) + b"ab",  # BYTEARRAY8
    b"\x80\x02\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x00" * 8,  # LONG4
]


def test_every_damaged_weights_file_is_a_checkpoint_error(tmp_path):
    """600 seeded truncated, bit-flipped, spliced and random files, plus length fields read as
    huge sizes: loading each either gives a state dict or raises CheckpointError, nothing else."""
    rng = random.Random(0)
    originals = _sample_pickles()
    files = [_mutate(rng.choice(originals), rng) for _ in range(600)] + HUGE_LENGTHS
    outcomes = {"loaded": 0, "refused": 0}
    for i, data in enumerate(files):
        path = tmp_path / f"fuzz{i}.pdparams"
        path.write_bytes(data)
        try:
            extract_state_dict(safe_load(str(path)), str(path))
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
        # anything else fails the test with its traceback (file i)
    assert outcomes["refused"] > 400 and outcomes["loaded"] > 0, outcomes
    for data in HUGE_LENGTHS:
        (tmp_path / "huge.pdparams").write_bytes(data)
        with pytest.raises(CheckpointError):
            safe_load(str(tmp_path / "huge.pdparams"))


# ----------------------------------------------------------------------------- mis-shaped weights

def test_proj_weight_hint_names_the_dimension_that_differs(world):
    from mmnas.models import build_model
    cfg = load_config(world.yml)
    model = build_model(cfg.model, 30, 12)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    flat_out = cfg.model.flat_out

    def message(**shapes):
        bad = dict(state)
        for key, shape in shapes.items():
            bad[key.replace("__", ".")] = np.zeros(shape, np.float32)
        with pytest.raises(CheckpointError) as info:
            match_state_dict(model, bad, "w.pdparams")
        return str(info.value)

    width = message(proj__weight=(flat_out * 2, 12))
    assert f"proj.weight: model expects [{flat_out}, 12], file has [{flat_out * 2}, 12]" in width
    assert f"dimension 0 ({flat_out} vs {flat_out * 2}): the fused feature width differs (model.flat_out" in width
    assert "answer vocabulary" not in width
    answers = message(proj__weight=(flat_out, 13), proj__bias=(13,))
    assert "dimension 1 (12 vs 13): the answer vocabulary size differs (A, this run's vs the file's)" in answers
    assert "--DATA_ROOT" in answers and "data.answer_dict" in answers
    assert "fused feature width" not in answers
    tokens = message(embedding__weight=(31, cfg.model.word_embed))
    assert "dimension 0 (30 vs 31): the question vocabulary size differs (T)" in tokens


def test_ctrl_c_in_a_search_then_the_printed_command_resumes_exactly(world, tmp_path):
    """--RUN=search: interrupted in epoch 2 (architecture steps), resumed by the printed command:
    the supernet, both optimizers and the genotype equal those of an uninterrupted search."""
    yml = tmp_path / "search.yml"
    yml.write_text(
        f"base: {os.path.join(REPO, 'configs', 'search', 'search_vqa_tiny.yml')}\n"
        "model: {hidden_size: 16, heads: 2, rel_head_width: 8, rel_size: 8, flat_mlp: 16, flat_out: 32, "
        "word_embed: 12}\n"
        "data: {split: train, num_workers: 0}\n"
        "train: {batch_size: 8, warmup_epochs: 0}\n"
        "search: {enc_positions: 2, dec_positions: 3, warmup_epochs: 1, arch_every: 1, eval_top_path: false}\n")

    def argv(version):
        return [sys.executable, RUN_PY, "--RUN=search", f"--MODEL={yml}", f"--VERSION={version}",
                f"--DATA_ROOT={world.data_root}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
                f"--RESULTS_DIR={tmp_path / 'results'}", f"--SEED={SEED}", "--MAX_EPOCH=3"]

    code, _, err = run_to_end(argv("whole"), tmp_path)
    assert code == 0, err[-3000:]
    run = Run(argv("cut"), tmp_path)
    run.wait_for(r"search epoch 2/3 \(search\):\s+0%")
    time.sleep(random.Random(5).uniform(0.0, 0.5))
    run.interrupt()
    assert run.finish() == 130, run.stderr[-3000:]
    match = the_interrupt_line(run.stderr)
    assert match.group("cmd"), match.group(0)
    argv_resume = shlex.split(match.group("cmd"))
    assert argv_resume[:3] == ["python", RUN_PY, "--RUN=search"]
    code, out, err = run_to_end([sys.executable] + argv_resume[1:], tmp_path)
    assert code == 0, err[-3000:]
    whole = ckpt_paths(str(tmp_path / "ckpt"), "whole", 3)
    cut = ckpt_paths(str(tmp_path / "ckpt"), "cut", 3)
    assert_same_state(safe_load(whole[0]), safe_load(cut[0]), "supernet weights")
    for name in ("optimizer", "arch_optimizer"):
        assert_same_state(safe_load(whole[1])[name], safe_load(cut[1])[name], name)


def run_processes(sid):
    """Live processes of session `sid` (run.py, its spawned processes, their loader workers and
    helpers), read from the process table; zombies, already dead, are not counted."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _ppid, _pgrp, session = f.read().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            found.append(int(pid))
    return found


def assert_no_process_left(sid, within=20.0):
    """Every process of the run ends within `within` seconds (the left-overs are killed, then reported)."""
    deadline = time.time() + within
    while run_processes(sid) and time.time() < deadline:
        time.sleep(0.2)
    left = run_processes(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert left == [], f"processes of the run still alive {within}s later: {left}"


@pytest.fixture(scope="module")
def reference_dp(world, tmp_path_factory):
    """An uninterrupted 2-process run of 2 epochs (with dropout, the masks differ from one process's)."""
    folder = tmp_path_factory.mktemp("reference_dp")
    code, _, err = run_to_end(run_args(world, folder, "whole", "--NPROCS=2", "--MAX_EPOCH=2"), folder)
    assert code == 0, err[-3000:]
    params, opt = ckpt_paths(str(folder / "ckpt"), "whole", 2)
    return SimpleNamespace(params=safe_load(params), opt=safe_load(opt)["optimizer"])


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-to-run.py", "SIGTERM-to-the-group"])
def test_signal_to_a_data_parallel_run_stops_every_process_and_resumes_exactly(world, reference_dp, tmp_path,
                                                                               signum, to_group):
    """A 2-process run at a random moment of epoch 2: `kill -INT` reaching run.py only (it passes
    the signal on), or SIGTERM to the whole process group (as `timeout` and `scancel` send it).
    Both processes stop at the same step (none is left waiting in an all-reduce), rank 0 prints
    the one line, exit 128 + the signal's number, and no process of the run is left in the
    process table; the printed command resumes with 2 processes to the weights and Adam
    moments of the uninterrupted 2-process run."""
    run = Run(run_args(world, tmp_path, "cut", "--NPROCS=2", "--MAX_EPOCH=2"), tmp_path)
    run.wait_for(r"epoch 2/2:\s+0%")
    time.sleep(random.Random(3 + signum).uniform(0.0, 1.0))
    if to_group:
        run.interrupt(signum)
    else:
        run.proc.send_signal(signum)
    assert run.finish() == 128 + signum, run.stderr[-3000:]
    assert_no_process_left(run.proc.pid)
    match = the_interrupt_line(run.stderr, run.stdout, signum)
    assert checkpoint_epochs(tmp_path, "cut")
    if match.group("cmd"):  # else it stopped after the last checkpoint
        assert "--NPROCS=2" in match.group("cmd"), match.group(0)
        code, _, err = run_to_end([sys.executable] + shlex.split(match.group("cmd"))[1:], tmp_path)
        assert code == 0, err[-3000:]
    params, opt = ckpt_paths(str(tmp_path / "ckpt"), "cut", 2)
    assert_same_state(reference_dp.params, safe_load(params), "weights")
    assert_same_state(reference_dp.opt, safe_load(opt)["optimizer"], "optimizer state")


def test_kill_9_of_the_parent_leaves_no_process_of_the_run(world, tmp_path):
    """run.py of a 2-process run (1 loader worker each) killed with SIGKILL, which it cannot
    handle: its processes notice within a second, stop at the same step, and nothing of the
    run is alive a few seconds later; only complete checkpoints are on disk."""
    run = Run(run_args(world, tmp_path, "orphans", "--NPROCS=2", "--NW=1"), tmp_path)
    run.wait_for(rf"epoch 2/{EPOCHS}:\s+0%")
    assert len(run_processes(run.proc.pid)) >= 3  # run.py and the 2 processes it spawned
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert_no_process_left(run.proc.pid, within=15.0)
    assert checkpoint_epochs(tmp_path, "orphans")
    assert "Termination signal" not in run.stdout and "C++ Traceback" not in run.stdout, run.stdout[-3000:]


def test_sigterm_during_val_prints_one_line_and_exits_143(tmp_path):
    """--RUN=val stopped by SIGTERM while it evaluates (450 questions): exit 143, the one line,
    no traceback (Paddle's C++ one included), no result file."""
    from mmnas.checkpoint_files import atomic_save, to_numpy_state
    from mmnas.data.vocab import build_vocab
    from mmnas.models import build_model
    data_root = tmp_path / "data"
    make_synthetic_vqa(str(data_root), n_train_images=4, n_val_images=150, n_test_images=1, n_vg_images=1,
                       questions_per_image=3, seed=2, min_boxes=10, max_boxes=20)
    vocab = build_vocab(str(data_root), str(tmp_path / "results" / "cache"), progress=False)
    model = build_model(load_config(TINY_YML).model, vocab.token_size, vocab.answer_size)
    atomic_save(to_numpy_state(model.state_dict()), str(tmp_path / "untrained.pdparams"))
    run = Run([sys.executable, RUN_PY, "--RUN=val", f"--MODEL={TINY_YML}", f"--DATA_ROOT={data_root}",
               f"--CKPT_PATH={tmp_path / 'untrained.pdparams'}", f"--RESULTS_DIR={tmp_path / 'results'}"], tmp_path)
    run.wait_for(r"eval:\s+0%")
    time.sleep(random.Random(4).uniform(0.0, 0.3))
    run.interrupt(signal.SIGTERM)
    assert run.finish() == 143, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "interrupted" in line]
    assert lines == ["--RUN=val interrupted by SIGTERM; no result file was written"], run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Termination signal" not in run.stdout, run.stdout[-3000:]
    written = [name for _, _, names in os.walk(tmp_path / "results") for name in names]
    assert not [name for name in written if name.startswith("result")], written


def test_resume_restores_the_process_count(world, tmp_path, capsys):
    """A checkpoint written by 2 processes resumes with 2 when --NPROCS is not given, and with
    a note when another count is."""
    from mmnas import cli
    cfg = _small_cfg(world, tmp_path, "np", max_epoch=1)
    train(cfg, progress=False)
    params, opt = ckpt_paths(cfg.ckpt_dir, "np", 1)
    saved = safe_load(opt)
    assert saved["processes"] == 1
    atomic_save({**saved, "processes": 2}, opt)
    argv = ["--RUN=train", f"--MODEL={world.yml}", "--RESUME=True", "--CKPT_V=np", "--CKPT_E=1", "--MAX_EPOCH=2",
            f"--CKPT_DIR={cfg.ckpt_dir}", f"--RESULTS_DIR={cfg.results_dir}"]
    args = cli.build_parser().parse_args(argv)
    cli.config_from_args(args)
    assert args.NPROCS == 2
    assert "note: resuming with 2 processes (--NPROCS=2), as the checkpoint was trained" in capsys.readouterr().err
    args = cli.build_parser().parse_args(argv + ["--NPROCS=1"])
    cli.config_from_args(args)
    assert args.NPROCS == 1
    assert "was trained with 2 process(es), this run uses 1: the update is the same up to float rounding" \
        in capsys.readouterr().err


# ----------------------------------------------------------------------------- digests, atomic writer

@pytest.fixture(scope="module")
def trained_once(world, tmp_path_factory):
    """One epoch of the small model, trained by the engine: ckpt/ckpt_once/epoch1.* and vocab.json."""
    folder = tmp_path_factory.mktemp("once")
    cfg = _small_cfg(world, folder, "once", max_epoch=1)
    train(cfg, progress=False)
    return SimpleNamespace(folder=folder, ckpt=folder / "ckpt" / "ckpt_once", cache=cfg.data.cache_dir)


def _flip_one_bit(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


def _only_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_a_flipped_bit_in_a_checkpoint_is_refused_by_name(world, trained_once, tmp_path):
    """Before: the flipped weight loaded and scored silently. Weights without a digest (the
    released layout, converted files) still load."""
    params, opt = trained_once.ckpt / "epoch1.pdparams", trained_once.ckpt / "epoch1.pdopt"
    data = params.read_bytes()
    assert data.endswith(b"\n") and checkpoint_files.DIGEST_MARK in data[-80:]
    import paddle
    assert sorted(paddle.load(str(params))) == sorted(safe_load(str(params)))  # paddle still reads it
    bad = tmp_path / "ckpt" / "ckpt_bad"
    bad.mkdir(parents=True)
    (bad / "epoch1.pdparams").write_bytes(_flip_one_bit(data, len(data) // 2))  # inside a weight array
    (bad / "epoch1.pdopt").write_bytes(opt.read_bytes())
    (bad / "vocab.json").write_bytes((trained_once.ckpt / "vocab.json").read_bytes())
    common = [f"--MODEL={world.yml}", f"--DATA_ROOT={world.data_root}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
              f"--RESULTS_DIR={tmp_path / 'results'}", "--NW=0"]
    code, out, err = run_to_end([sys.executable, RUN_PY, "--RUN=val", "--CKPT_V=bad", "--CKPT_E=1", *common], tmp_path)
    assert code == 2, err[-3000:]
    assert _only_error_line(err) == (
        f"error: {bad / 'epoch1.pdparams'} is damaged: its bytes no longer match the SHA-256 digest written "
        f"with it (a changed bit on the disk, in memory or in a copy); use another epoch's checkpoint or copy "
        f"the file again.")
    # the optimizer file of a resume, too
    (bad / "epoch1.pdparams").write_bytes(data)
    (bad / "epoch1.pdopt").write_bytes(_flip_one_bit(opt.read_bytes(), 200))
    code, out, err = run_to_end([sys.executable, RUN_PY, "--RUN=train", "--RESUME=True", "--CKPT_V=bad",
                                 "--CKPT_E=1", "--MAX_EPOCH=2", *common], tmp_path)
    assert code == 2, err[-3000:]
    assert _only_error_line(err).startswith(f"error: {bad / 'epoch1.pdopt'} is damaged: ")
    # the released layout: the same pickle without a digest loads and scores
    released = tmp_path / "released.pdparams"
    released.write_bytes(data[:data.rindex(checkpoint_files.DIGEST_MARK)])
    assert pickle.loads(released.read_bytes()).keys() == safe_load(str(params)).keys()
    code, out, err = run_to_end([sys.executable, RUN_PY, "--RUN=val", f"--CKPT_PATH={released}", *common], tmp_path)
    assert code == 0, err[-3000:]
    assert "released val:" in out


def _left_in(folder):
    """Every file under `folder` but the filler: what a failed write left behind."""
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder)
                  for n in names if n != "filler")


def test_save_pred_on_a_full_disk_leaves_nothing(world, trained_once, tmp_path, mount_tmpfs):
    """Before: a truncated (corrupt) .npz was left in results/pred/."""
    results = tmp_path / "results"
    full = mount_tmpfs(results / "pred", "64k")
    _fill(full)
    code, out, err = run_to_end([sys.executable, RUN_PY, "--RUN=val", f"--MODEL={world.yml}", "--CKPT_V=once",
                                 "--CKPT_E=1", "--SAVE_PRED=True", f"--DATA_ROOT={world.data_root}",
                                 f"--CKPT_DIR={trained_once.folder / 'ckpt'}", f"--RESULTS_DIR={results}",
                                 "--NW=0"], tmp_path)
    assert code == 2, err[-3000:]
    line = _only_error_line(err)
    assert re.fullmatch(rf"error: cannot write {re.escape(str(full))}/result_run_once_epoch1\S*\.npz: No space "
                        rf"left on device; free some space or choose another --RESULTS_DIR", line), line
    assert _left_in(full) == []


def test_predict_picture_on_a_full_disk_leaves_nothing(world, trained_once, tmp_path, mount_tmpfs):
    """Before: a PIL traceback and a 0-byte temporary beside the picture's path."""
    full = mount_tmpfs(tmp_path / "full", "64k")
    _fill(full)
    feats_dir = os.path.join(world.data_root, "vqa", "feats", "val2014")
    feats = os.path.join(feats_dir, sorted(os.listdir(feats_dir))[0])
    picture = full / "pictures" / "answer.png"
    code, out, err = run_to_end([sys.executable, RUN_PY, "--RUN=predict", f"--MODEL={world.yml}",
                                 f"--CKPT_PATH={trained_once.ckpt / 'epoch1.pdparams'}", f"--FEATS={feats}",
                                 "--QUESTION=what is it?", f"--PICTURE={picture}",
                                 f"--RESULTS_DIR={tmp_path / 'results'}"], tmp_path)
    assert code == 2, err[-3000:]
    assert _only_error_line(err) == (f"error: cannot write {picture}: No space left on device; free some space "
                                     f"or choose another --PICTURE")
    assert _left_in(full) == []


# ----------------------------------------------------------------------------- nothing overwritten unasked

def test_a_new_run_of_an_existing_version_is_refused_unless_asked(world, tmp_path, capsys):
    """Before: a second `--VERSION=again --MAX_EPOCH=1` silently rewrote epoch1 beside the earlier
    run's epoch2, one folder holding two runs."""
    from mmnas import cli
    cfg = _small_cfg(world, tmp_path, "again", max_epoch=2)
    train(cfg, progress=False)
    folder = tmp_path / "ckpt" / "ckpt_again"
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    argv = ["--RUN=train", f"--MODEL={world.yml}", "--VERSION=again", f"--DATA_ROOT={world.data_root}",
            f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}", f"--SEED={SEED + 1}",
            f"--BS={BATCH}", "--MAX_EPOCH=1", "--NW=0"]
    assert cli.main(argv) == 2
    assert _only_error_line(capsys.readouterr().err) == (
        f"error: {folder} already holds the checkpoints of an earlier run (epochs 1, 2); continue it with "
        f"--RESUME=True --CKPT_V=again --CKPT_E=2, replace them with --OVERWRITE=True, or choose another --VERSION")
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == before
    # asked: the earlier run's files go, the folder holds this run only
    assert cli.main(argv + ["--OVERWRITE=True"]) == 0
    assert f"note: --OVERWRITE=True: removed the earlier run's epochs 1, 2 from {folder}" in capsys.readouterr().err
    assert checkpoint_epochs(tmp_path, "again") == [1]
    assert safe_load(str(folder / "epoch1.pdopt"))["seed"] == SEED + 1
    # fine-tuning from a file the overwrite would remove
    assert cli.main(argv + ["--OVERWRITE=True", f"--CKPT_PATH={folder / 'epoch1.pdparams'}"]) == 2
    assert _only_error_line(capsys.readouterr().err) == (
        f"error: --CKPT_PATH={folder / 'epoch1.pdparams'} is one of the files --OVERWRITE=True would remove from "
        f"{folder}; copy it elsewhere first, or choose another --VERSION")
    assert checkpoint_epochs(tmp_path, "again") == [1]
    assert cli.main(argv + ["--OVERWRITE=True", "--RESUME=True", "--CKPT_V=again", "--CKPT_E=1"]) == 2
    assert ("--OVERWRITE=True starts the run again from epoch 1, --RESUME=True continues it"
            in _only_error_line(capsys.readouterr().err))
    assert cli.main(["--RUN=val", f"--MODEL={world.yml}", "--CKPT_V=again", "--CKPT_E=1", "--OVERWRITE=True",
                     f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--DATA_ROOT={world.data_root}"]) == 2
    assert "--OVERWRITE is for --RUN=train and --RUN=search, not --RUN=val." in capsys.readouterr().err
