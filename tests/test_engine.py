"""Training engine: the LR schedule, gradient accumulation, data parallel on CPU, exact resume,
atomic checkpoints, the non-finite-loss stop, evaluation files and the run logs.

Everything runs on one small synthetic dataset (generated once per session) and a very small
MMNasNet, so the whole file takes well under a minute of CPU.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from mmnas import cli
from mmnas.config import load_config
from mmnas.data import VQADataset, build_vocab, collate_batch
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.engine import train as train_mod
from mmnas.checkpoint_files import atomic_save, load_weights, safe_load
from mmnas.engine.evaluate import predict
from mmnas.engine.logger import vdl_tag
from mmnas.engine.schedule import base_learning_rate, learning_rate
from mmnas.engine.checkpoint import TrainingError, ckpt_paths
from mmnas.engine.train import sorted_pieces, train
from mmnas.metrics import evaluate as vqa_accuracy
from mmnas.models import build_model
from mmnas.tasks import answer as answer_task_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YML = os.path.join(REPO, "configs", "vqa", "mmnasnet_tiny.yml")
BATCH = 16
TRAIN_QUESTIONS = 60 * 3
STEPS = TRAIN_QUESTIONS // BATCH  # steps per epoch (the last partial batch is dropped)

# Parameters whose gradient is zero in exact arithmetic: a key bias adds the same q.b to every
# score of a query, and the last AttFlat bias (one glimpse) the same value to every position,
# so softmax cancels them. Their float gradients are rounding noise, which Adam (eps 1e-9)
# blows up to full-size steps; any change of summation order changes them. They cannot
# affect the logits, so weight comparisons below skip them.
GRADIENT_FREE = re.compile(r"(linear_k\.bias|attflat_(img|lang)\.mlp\.linear\.bias)$")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """One small synthetic VQA-v2 and two YAML configs of a very small model."""
    root = tmp_path_factory.mktemp("engine")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=60, n_val_images=20, n_test_images=15, n_vg_images=10,
                       questions_per_image=3, seed=0, min_boxes=10, max_boxes=20)
    yml = root / "tiny_test.yml"
    yml.write_text(
        f"base: {TINY_YML}\n"
        "model:\n"
        "  hidden_size: 32\n  heads: 4\n  rel_head_width: 16\n  rel_size: 16\n"
        "  flat_mlp: 32\n  flat_out: 64\n  dropout: 0.0\n"
        "  genotype: {enc: [SA, FFN], dec: [GA, RSA, FFN]}\n"
        "data:\n"
        f"  data_root: {data_root}\n  split: train\n  num_workers: 0\n"
        "train:\n"
        f"  batch_size: {BATCH}\n  max_epoch: 1\n  eval_every_epoch: false\n  eval_batch_size: 16\n")
    yml_dropout = root / "tiny_test_dropout.yml"
    yml_dropout.write_text(f"base: {yml}\nmodel:\n  dropout: 0.1\n")
    return SimpleNamespace(root=root, data_root=str(data_root), yml=str(yml), yml_dropout=str(yml_dropout),
                           cache_dir=str(root / "cache"))


def make_cfg(world, folder, version, yml=None, **train_overrides):
    cfg = load_config(yml or world.yml)
    cfg.data.cache_dir = world.cache_dir
    cfg.results_dir = str(folder / "results")
    cfg.ckpt_dir = str(folder / "ckpt")
    cfg.version = version
    for key, value in train_overrides.items():
        assert hasattr(cfg.train, key), key
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="session")
def base_run(world):
    """One epoch, dropout 0, validation after the epoch: the reference for several tests."""
    folder = world.root / "base"
    cfg = make_cfg(world, folder, "base", eval_every_epoch=True)
    summary = train(cfg, progress=False)
    params, opt = ckpt_paths(cfg.ckpt_dir, "base", 1)
    return SimpleNamespace(cfg=cfg, summary=summary, params=params, opt=opt, ckpt_dir=cfg.ckpt_dir,
                           results_dir=cfg.results_dir)


def cli_main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


GRAD_NORM = vdl_tag("train", "grad_norm")


def vdl_scalars(vdl_dir, tag):
    """Values of one VisualDL scalar tag (which must exist), in step order."""
    visualdl = pytest.importorskip("visualdl")
    files = glob.glob(os.path.join(vdl_dir, "vdlrecords.*.log"))
    assert len(files) == 1, files
    reader = visualdl.LogReader(file_path=files[0])
    assert tag in reader.get_tags()["scalar"], tag
    records = reader.get_data("scalar", tag)
    return np.array([r.value for r in sorted(records, key=lambda r: r.id)])


def assert_same_weights(a, b, rtol=1e-5):
    """Every parameter of a equals b within rtol of its largest magnitude (gradient-free ones skipped)."""
    assert sorted(a) == sorted(b)
    compared = 0
    for key in a:
        if GRADIENT_FREE.search(key):
            continue
        scale = max(float(np.abs(a[key]).max()), 1e-3)
        diff = float(np.abs(a[key].astype(np.float64) - b[key]).max())
        assert diff <= rtol * scale, f"{key}: max difference {diff:.3g} (scale {scale:.3g})"
        compared += 1
    assert compared > 40


def tmp_files(folder):
    return [f for f in os.listdir(folder) if f.startswith(".tmp")]


# ----------------------------------------------------------------------------- 1. learning rate

def spec_lr(step, epoch, S, base, decay_epochs=(10, 12), rate=0.2):
    """The published rule (spec README, "Training recipe"), W + 1 = 4."""
    if step <= int(S * 4 * 0.25):
        lr = base * 1 / 4
    elif step <= int(S * 4 * 0.5):
        lr = base * 2 / 4
    elif step <= int(S * 4 * 0.75):
        lr = base * 3 / 4
    else:
        lr = base
    for d in decay_epochs:
        if epoch >= d:
            lr *= rate
    return lr


def test_learning_rate_warmup_steps():
    base = 1.2e-4
    lr = lambda step, S: learning_rate(step, (step - 1) // S, S, base, 3, [10, 12], 0.2)
    expected = {1: base / 4, 100: base / 4, 101: base / 2, 200: base / 2, 201: base * 3 / 4,
                300: base * 3 / 4, 301: base, 1000: base}
    for step, value in expected.items():
        assert lr(step, 100) == pytest.approx(value, rel=1e-12), step
        assert lr(step, 100) == pytest.approx(spec_lr(step, (step - 1) // 100, 100, base), rel=1e-12)
    # S = 7: the quarter boundaries are steps 7, 14, 21
    for step, value in {7: base / 4, 8: base / 2, 14: base / 2, 15: base * 3 / 4, 21: base * 3 / 4,
                        22: base}.items():
        assert lr(step, 7) == pytest.approx(value, rel=1e-12), step
    for S in (1, 3, 7, 13):
        for step in range(1, 4 * S + 3):
            assert lr(step, S) == pytest.approx(spec_lr(step, (step - 1) // S, S, base), rel=1e-12)


def test_learning_rate_truncates_fractional_boundaries():
    # W = 3, E = 1000 / 64 = 15.625 (not 15): boundaries int(62.5 * 0.25) = 15, int(31.25) = 31,
    # int(46.875) = 46; with E truncated first they would be 15, 30 and 45
    lr = lambda step: learning_rate(step, 0, 1000 / 64, 1.0, 3, [], 0.2)
    assert [lr(s) for s in (15, 16, 31, 32, 46, 47)] == [0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


def test_learning_rate_warmup_of_other_lengths():
    """GQA's W = 2 (gqa spec): base/3, 2base/3, then base from the third quarter; W = 1 and W = 0
    (toy configs) never step above base."""
    E = 10.0
    w2 = [learning_rate(s, 0, E, 3.0, 2, [], 0.2) for s in (7, 8, 15, 16, 22, 23)]
    assert w2 == pytest.approx([1.0, 2.0, 2.0, 3.0, 3.0, 3.0])  # boundaries int(7.5), int(15), int(22.5)
    w1 = [learning_rate(s, 0, E, 1.0, 1, [], 0.2) for s in (5, 6, 10, 11, 15, 16)]
    assert w1 == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert all(learning_rate(s, 0, E, 1.0, 0, [], 0.2) == 1.0 for s in range(1, 12))


def test_learning_rate_decay_epochs():
    base, S = 1e-4, 100
    for epoch, factor in {0: 1, 9: 1, 10: 0.2, 11: 0.2, 12: 0.04, 13: 0.04}.items():
        step = epoch * S + 1
        if epoch == 0:
            factor = 0.25  # still warming up
        got = learning_rate(step, epoch, S, base, 3, [10, 12], 0.2)
        assert got == pytest.approx(base * factor, rel=1e-12), epoch
        assert got == pytest.approx(spec_lr(step, epoch, S, base), rel=1e-12)


def test_base_learning_rate_follows_split():
    t = load_config("small").train
    assert base_learning_rate(t, "train") == t.lr_base == 1.2e-4
    assert base_learning_rate(t, "train+val") == t.lr_base
    assert base_learning_rate(t, "train+val+vg") == t.lr_base_vg == 1e-4
    assert base_learning_rate(load_config("large").train, "train+val+vg") == 5e-5


def test_training_uses_the_schedule(base_run):
    lrs = vdl_scalars(os.path.join(base_run.results_dir, "vdl", "base"), vdl_tag("train", "lr"))
    t = base_run.cfg.train
    expected = [learning_rate(s, 0, STEPS, t.lr_base, t.warmup_epochs, t.lr_decay_epochs, t.lr_decay_rate)
                for s in range(1, STEPS + 1)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert base_run.summary["history"][0]["lr"] == pytest.approx(expected[-1])


# ----------------------------------------------------------------------------- 2. gradient accumulation

def test_accumulation_equals_full_batch(world, base_run, tmp_path):
    cfg = make_cfg(world, tmp_path, "accu2", accu=2)
    train(cfg, progress=False)
    full = safe_load(base_run.params)
    accu = safe_load(ckpt_paths(cfg.ckpt_dir, "accu2", 1)[0])
    assert_same_weights(accu, full, rtol=1e-5)
    # the summed loss (not a mean per sub-batch): equal gradient norms before clipping
    np.testing.assert_allclose(vdl_scalars(os.path.join(cfg.results_dir, "vdl", "accu2"), GRAD_NORM),
                               vdl_scalars(os.path.join(base_run.results_dir, "vdl", "base"), GRAD_NORM),
                               rtol=1e-5)


# ----------------------------------------------------------------------------- 3. data parallel

@pytest.mark.parametrize("accu", [1, 2])
def test_two_process_data_parallel_equals_one_process(world, base_run, tmp_path, accu):
    ckpt_dir, results_dir = tmp_path / "ckpt", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run.py"), "--RUN=train", f"--MODEL={world.yml}", "--NPROCS=2",
         f"--ACCU={accu}", "--VERSION=dp", f"--CKPT_DIR={ckpt_dir}", f"--RESULTS_DIR={results_dir}"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp = safe_load(ckpt_paths(str(ckpt_dir), "dp", 1)[0])
    assert_same_weights(dp, safe_load(base_run.params), rtol=1e-5)
    np.testing.assert_allclose(vdl_scalars(os.path.join(results_dir, "vdl", "dp"), GRAD_NORM),
                               vdl_scalars(os.path.join(base_run.results_dir, "vdl", "base"), GRAD_NORM),
                               rtol=1e-5)
    # the epoch loss is the mean over both processes' questions
    line = re.search(r"epoch 1/1: loss ([0-9.]+)", proc.stdout)
    assert line, proc.stdout[-2000:]
    assert float(line.group(1)) == pytest.approx(base_run.summary["history"][0]["loss"], abs=2e-5)


# ----------------------------------------------------------------------------- 4. resume

def test_resume_replays_the_uninterrupted_run(world, tmp_path, monkeypatch, capsys):
    # A: three epochs in one go, dropout on
    cfg_a = make_cfg(world, tmp_path, "A", yml=world.yml_dropout, max_epoch=3)
    assert cfg_a.model.dropout == 0.1
    train(cfg_a, progress=False)

    # B: the same run, interrupted (Ctrl-C) during the second epoch
    real_epoch = train_mod.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    cfg_b = make_cfg(world, tmp_path, "B", yml=world.yml_dropout, max_epoch=3)
    with pytest.raises(KeyboardInterrupt) as info:
        train(cfg_b, progress=False)
    monkeypatch.undo()
    assert "interrupted at epoch 2 step 1" in str(info.value)
    assert "--RESUME=True --CKPT_V=B --CKPT_E=1" in str(info.value)
    folder_b = os.path.dirname(ckpt_paths(cfg_b.ckpt_dir, "B", 1)[0])
    assert sorted(os.listdir(folder_b)) == ["epoch1.pdopt", "epoch1.pdparams", "vocab.json"]

    # resume B through the command line, as the message says
    code, out, err = cli_main(["--RUN=train", f"--MODEL={world.yml_dropout}", "--RESUME=True", "--CKPT_V=B",
                               "--CKPT_E=1", "--MAX_EPOCH=3", f"--CKPT_DIR={cfg_b.ckpt_dir}",
                               f"--RESULTS_DIR={cfg_b.results_dir}"], capsys)
    assert code == 0, err[-3000:]
    assert "resumed from" in out
    for epoch in (2, 3):
        pa, oa = ckpt_paths(cfg_a.ckpt_dir, "A", epoch)
        pb, ob = ckpt_paths(cfg_b.ckpt_dir, "B", epoch)
        wa, wb = safe_load(pa), safe_load(pb)
        assert sorted(wa) == sorted(wb)
        for key in wa:  # gradient-free parameters included: the replay is exact
            np.testing.assert_allclose(wb[key], wa[key], rtol=0, atol=1e-6, err_msg=f"epoch {epoch} {key}")
        sa, sb = safe_load(oa)["optimizer"], safe_load(ob)["optimizer"]
        assert sorted(sa) == sorted(sb)
        assert any(k.startswith("param:") and "moment1" in k for k in sa)
        for key in sa:
            np.testing.assert_allclose(np.asarray(sb[key]), np.asarray(sa[key]), rtol=0, atol=1e-6,
                                       err_msg=f"optimizer state {key} after epoch {epoch}")


def test_resume_refuses_missing_checkpoint(world, tmp_path):
    cfg = make_cfg(world, tmp_path, "R", max_epoch=2)
    cfg.resume, cfg.ckpt_version, cfg.ckpt_epoch = True, "nothing", 1
    with pytest.raises(TrainingError, match="--RESUME needs .*epoch1.pdparams"):
        train(cfg, progress=False)


def test_resume_refuses_a_different_batch_setup(world, base_run, tmp_path):
    """The base run saved epoch 1 with BATCH; resuming it with another batch size would replay a
    different data order and LR schedule, so it is refused before training."""
    cfg = make_cfg(world, tmp_path, "R2", max_epoch=2, batch_size=BATCH // 2)
    cfg.ckpt_dir = base_run.ckpt_dir
    cfg.resume, cfg.ckpt_version, cfg.ckpt_epoch = True, "base", 1
    with pytest.raises(TrainingError, match=f"{STEPS} steps per epoch, this run has {TRAIN_QUESTIONS // (BATCH // 2)}"):
        train(cfg, progress=False)
    assert not os.path.exists(ckpt_paths(base_run.ckpt_dir, "R2", 2)[0])


def test_error_inside_data_parallel_processes_is_one_sentence(world, base_run, tmp_path):
    """A refusal raised inside 2 spawned processes (resuming epoch 1 with --MAX_EPOCH=1): both
    processes leave the one-sentence error to the parent (engine/distributed.py), which prints it
    once and exits 2, with no Python traceback of ours."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run.py"), "--RUN=train", f"--MODEL={world.yml}", "--NPROCS=2",
         "--MAX_EPOCH=1", "--RESUME=True", "--CKPT_V=base", "--CKPT_E=1", "--VERSION=R3",
         f"--CKPT_DIR={base_run.ckpt_dir}", f"--RESULTS_DIR={tmp_path / 'results'}"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == \
        ["error: --CKPT_E=1 is already >= --MAX_EPOCH=1; nothing to train (--MAX_EPOCH=2 or more continues "
         "the run)."], proc.stderr[-3000:]
    assert "resumed from" not in proc.stdout and "preload" not in proc.stderr  # refused before reading anything
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(ckpt_paths(base_run.ckpt_dir, "R3", 2)[0])


def test_processes_stopped_on_errors_report_each_different_message_once_in_process_order(tmp_path):
    from mmnas.engine.distributed import _expected_messages
    for index, message in ((2, "A"), (1, "B"), (0, "A")):
        (tmp_path / f"{index}.txt").write_text(message)
    assert _expected_messages(str(tmp_path), 4) == "A\nerror: B"  # cli prints "error: " before it
    assert "could not report" in _expected_messages(str(tmp_path / "nothing"), 2)


# ----------------------------------------------------------------------------- 5. atomic checkpoints

KILLED_WRITER = r"""
import sys, time
import numpy as np
from mmnas.checkpoint_files import atomic_save

class Stall:
    # pickled after the arrays: signals that they are in the temporary file, then waits to be killed
    def __reduce__(self):
        open(sys.argv[2], "w").close()
        time.sleep(120)
        return (int, (0,))

big = [np.full(1 << 20, i, dtype=np.float32) for i in range(16)]  # 64 MB
atomic_save({"big": big, "stall": Stall()}, sys.argv[1])
"""


def _old_checkpoint(path):
    old = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, dtype=np.float32)}
    atomic_save(old, path)
    with open(path, "rb") as f:
        return old, f.read()


def _check_old_intact(path, old, old_bytes):
    with open(path, "rb") as f:
        assert f.read() == old_bytes
    loaded = safe_load(path)
    assert sorted(loaded) == sorted(old)
    for key in old:
        np.testing.assert_array_equal(loaded[key], old[key])
    plain = paddle.load(path)
    for key in old:
        np.testing.assert_array_equal(np.asarray(plain[key]), old[key])


def test_killed_checkpoint_write_keeps_old_file(tmp_path):
    path = str(tmp_path / "epoch1.pdparams")
    old, old_bytes = _old_checkpoint(path)
    marker = tmp_path / "arrays_written"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, path, str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "the writer never reached the middle of the pickle"
            time.sleep(0.02)
        temps = tmp_files(tmp_path)
        assert len(temps) == 1
        assert os.path.getsize(tmp_path / temps[0]) > 60 * 2 ** 20  # the arrays are on disk, the pickle is not finished
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    _check_old_intact(path, old, old_bytes)
    # the next write of that checkpoint lands and removes the killed write's temporary
    others = [".tmp-keepme-other.pdopt", ".tmp-abcdefghbest_epoch1.pdparams"]  # other files': left alone
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    atomic_save({"w": np.ones(3, np.float32)}, path)
    assert sorted(tmp_files(tmp_path)) == sorted(others)
    np.testing.assert_array_equal(safe_load(path)["w"], np.ones(3, np.float32))


def test_failed_pickling_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "epoch1.pdparams")
    old, old_bytes = _old_checkpoint(path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle this"):
        atomic_save({"big": np.zeros(1 << 20, dtype=np.float32), "bad": Unpicklable()}, path)
    assert tmp_files(tmp_path) == []
    _check_old_intact(path, old, old_bytes)


# ----------------------------------------------------------------------------- 6. non-finite loss

PIECES = load_config("small").train.box_pieces  # loss computations per step with ACCU=1


def _poison_loss(monkeypatch, at_step):
    """Make the loss NaN in the at_step-th step (counted from 1 over the run)."""
    at_call = (at_step - 1) * PIECES + 1
    real = answer_task_mod.answer_loss
    calls = []

    def poisoned(logits, targets, kind="bce"):
        calls.append(1)
        loss = real(logits, targets, kind)
        return loss * float("nan") if len(calls) == at_call else loss

    monkeypatch.setattr(answer_task_mod, "answer_loss", poisoned)  # the answer task's loss (tasks/answer.py)


def test_nan_loss_stops_with_last_good_checkpoint(world, tmp_path, monkeypatch):
    cfg = make_cfg(world, tmp_path, "nan", max_epoch=3)
    _poison_loss(monkeypatch, STEPS + 3)  # epoch 2, step 3
    with pytest.raises(TrainingError) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert "non-finite loss" in message and "epoch 2, step 3" in message
    good, good_opt = ckpt_paths(cfg.ckpt_dir, "nan", 1)
    assert good in message
    folder = os.path.dirname(good)
    assert sorted(os.listdir(folder)) == ["epoch1.pdopt", "epoch1.pdparams", "vocab.json"]
    model = build_model(cfg.model, *_vocab_sizes(world))
    load_weights(model, good)
    assert safe_load(good_opt)["epoch"] == 1
    assert all(np.isfinite(v.numpy()).all() for v in paddle.load(good).values())


def test_nan_loss_via_cli_exits_nonzero(world, tmp_path, monkeypatch, capsys):
    _poison_loss(monkeypatch, 2)  # epoch 1, step 2: nothing saved at all
    code, out, err = cli_main(["--RUN=train", f"--MODEL={world.yml}", "--VERSION=nancli",
                               f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"], capsys)
    assert code != 0
    assert "non-finite loss" in err and "epoch 1, step 2" in err and "no checkpoint was written yet" in err
    assert not glob.glob(str(tmp_path / "ckpt" / "ckpt_nancli" / "*.pdparams"))


# ----------------------------------------------------------------------------- 7. evaluation

def _vocab(world):
    return build_vocab(world.data_root, world.cache_dir, progress=False)


def _vocab_sizes(world):
    vocab = _vocab(world)
    return vocab.token_size, vocab.answer_size


def _raw(world, name):
    with open(os.path.join(world.data_root, "vqa", "raw", name), encoding="utf-8") as f:
        return json.load(f)


def test_fine_tuning_starts_from_the_file_with_a_fresh_optimizer(world, base_run, tmp_path, capsys):
    """--RUN=train --CKPT_PATH=w: the base run's initial weights saved to a file and trained from
    through the command line reproduce the base run's first epoch, so the run starts from the
    file's weights with a fresh optimizer and LR schedule (a resumed optimizer or a later epoch
    of the schedule would step differently)."""
    from mmnas.engine.runner import initial_word_vectors
    vocab = _vocab(world)
    paddle.seed(base_run.cfg.train.seed)
    start = build_model(base_run.cfg.model, vocab.token_size, vocab.answer_size,
                        initial_word_vectors(base_run.cfg, vocab))
    weights = tmp_path / "start.pdparams"
    atomic_save({k: v.numpy() for k, v in start.state_dict().items()}, str(weights))
    common = [f"--MODEL={world.yml}", f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"]
    code, out, err = cli_main(["--RUN=train", f"--CKPT_PATH={weights}", "--VERSION=ft", *common], capsys)
    assert code == 0, err[-3000:]
    assert f"starting from the weights of {weights}" in out
    tuned_params, tuned_opt = ckpt_paths(str(tmp_path / "ckpt"), "ft", 1)
    assert_same_weights(safe_load(tuned_params), safe_load(base_run.params))
    tuned, base = safe_load(tuned_opt)["optimizer"], safe_load(base_run.opt)["optimizer"]
    pows = [k for k in base if "beta1_pow" in k]
    assert pows and all(np.allclose(tuned[k], base[k]) for k in pows)  # STEPS Adam steps, not more

    # from the base run's trained weights, one more epoch moves them (a run that ignored the file
    # would start from the same random init as the base run and land on its weights again)
    code, out, err = cli_main(["--RUN=train", f"--CKPT_PATH={base_run.params}", "--VERSION=ft1", *common], capsys)
    assert code == 0, err[-3000:]
    again, trained = safe_load(ckpt_paths(str(tmp_path / "ckpt"), "ft1", 1)[0]), safe_load(base_run.params)
    moved = max(float(np.abs(again[k] - trained[k]).max()) for k in trained if not GRADIENT_FREE.search(k))
    assert moved > 1e-3, moved

    # the released model of another vocabulary: refused as --RUN=val refuses it, nothing written
    other = build_model(base_run.cfg.model, vocab.token_size, vocab.answer_size + 3)
    wrong = tmp_path / "other_answers.pdparams"
    atomic_save({k: v.numpy() for k, v in other.state_dict().items()}, str(wrong))
    code, out, err = cli_main(["--RUN=train", f"--CKPT_PATH={wrong}", "--VERSION=ft2", *common], capsys)
    assert code == 2
    assert str(wrong) in err and str(vocab.answer_size + 3) in err and str(vocab.answer_size) in err
    for leftover in (tmp_path / "ckpt" / "ckpt_ft2", tmp_path / "results" / "vdl" / "ft2",
                     tmp_path / "results" / "log" / "log_run_ft2.txt"):
        assert not leftover.exists(), leftover  # no empty run folder, no empty run in VisualDL

    # continuing and starting fresh are two different requests
    code, out, err = cli_main(["--RUN=train", f"--CKPT_PATH={weights}", "--RESUME=True", "--CKPT_V=ft",
                               "--CKPT_E=1", *common], capsys)
    assert code == 2 and "--CKPT_PATH" in err and "--RESUME" in err


def test_test_run_answers_every_test_question(world, base_run, tmp_path, capsys):
    results = tmp_path / "results"
    code, out, err = cli_main(["--RUN=test", f"--MODEL={world.yml}", f"--CKPT_DIR={base_run.ckpt_dir}",
                               "--CKPT_V=base", "--CKPT_E=1", f"--RESULTS_DIR={results}"], capsys)
    assert code == 0, err[-3000:]
    path = results / "result_test" / "result_run_base_epoch1_test.json"
    with open(path) as f:
        answers = json.load(f)
    test_ids = [q["question_id"] for q in _raw(world, "v2_OpenEnded_mscoco_test2015_questions.json")["questions"]]
    assert len(test_ids) == 45
    assert sorted(a["question_id"] for a in answers) == sorted(test_ids)
    vocab_answers = set(_vocab(world).ans_to_ix)
    assert all(isinstance(a["answer"], str) and a["answer"] in vocab_answers for a in answers)


def test_test_run_with_ckpt_path_and_saved_logits(world, base_run, tmp_path, capsys):
    weights = tmp_path / "my_weights.pdparams"
    weights.write_bytes(open(base_run.params, "rb").read())
    results = tmp_path / "results"
    code, out, err = cli_main(["--RUN=test", f"--MODEL={world.yml}", f"--CKPT_PATH={weights}",
                               "--SAVE_PRED=True", f"--RESULTS_DIR={results}"], capsys)
    assert code == 0, err[-3000:]
    with open(results / "result_test" / "result_run_my_weights_test.json") as f:
        answers = {a["question_id"]: a["answer"] for a in json.load(f)}
    preds = glob.glob(str(results / "pred" / "*.npz"))
    assert len(preds) == 1
    pred = np.load(preds[0])
    vocab = _vocab(world)
    assert pred["logits"].shape == (45, vocab.answer_size)
    assert sorted(pred["question_ids"].tolist()) == sorted(answers)
    for qid, row in zip(pred["question_ids"].tolist(), pred["logits"]):
        assert answers[qid] == vocab.ix_to_ans[int(row.argmax())]


def test_val_run_scores_match_the_metric(world, base_run, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--RUN=val", f"--MODEL={world.yml}", f"--CKPT_DIR={base_run.ckpt_dir}", "--CKPT_V=base", "--CKPT_E=1",
            f"--RESULTS_DIR={results}"]
    code, out, err = cli_main(argv, capsys)
    assert code == 0, err[-3000:]
    printed = re.search(r"base_epoch1 val: overall ([0-9.]+)", out)
    assert printed, out
    with open(results / "cache" / "result_run_base_epoch1_val.json") as f:
        predictions = json.load(f)
    annotations = _raw(world, "v2_mscoco_val2014_annotations.json")["annotations"]
    assert sorted(p["question_id"] for p in predictions) == sorted(a["question_id"] for a in annotations)
    expected = vqa_accuracy(annotations, predictions)
    assert float(printed.group(1)) == pytest.approx(expected["overall"], abs=0.005)
    returned = cli.run_eval(cli.config_from_args(cli.build_parser().parse_args(argv)))
    capsys.readouterr()
    assert returned["scores"] == expected
    # the validation after the training epoch scored the same weights the same way
    assert base_run.summary["history"][0]["val"] == expected


def test_ordered_prediction_equals_plain_loop(world, base_run):
    vocab = _vocab(world)
    dataset = VQADataset(world.data_root, "val", vocab, progress=False)
    assert not np.array_equal(np.argsort(dataset.box_counts, kind="stable"), np.arange(len(dataset)))
    model = build_model(base_run.cfg.model, vocab.token_size, vocab.answer_size)
    load_weights(model, base_run.params)
    logits = predict(model, dataset, batch_size=16, progress=False)
    model.eval()
    plain = []
    with paddle.no_grad():
        for start in range(0, len(dataset), 7):
            feats, boxes, qids, _, _ = collate_batch([dataset[i] for i in range(start, min(start + 7, len(dataset)))])
            plain.append(model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(qids)).numpy())
    plain = np.concatenate(plain)
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
    assert np.array_equal(logits.argmax(1), plain.argmax(1))


# ----------------------------------------------------------------------------- 8. plain paddle.load

def test_checkpoint_loads_with_plain_paddle(world, base_run):
    state = paddle.load(base_run.params)
    model = build_model(base_run.cfg.model, *_vocab_sizes(world))
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected
    saved = safe_load(base_run.params)
    own = model.state_dict()
    assert sorted(own) == sorted(saved)
    for key, value in own.items():
        np.testing.assert_array_equal(value.numpy(), saved[key])
    opt = paddle.load(base_run.opt)
    assert opt["epoch"] == 1 and opt["steps_per_epoch"] == STEPS and opt["optimizer"]


# ----------------------------------------------------------------------------- 10. logs

def test_text_log_and_visualdl(base_run):
    with open(os.path.join(base_run.results_dir, "log", "log_run_base.txt"), encoding="utf-8") as f:
        log = f.read()
    assert "config:" in log and '"hidden_size": 32' in log and '"batch_size": 16' in log
    assert re.search(r"epoch 1/1: loss [0-9.]+, lr [0-9.e+-]+", log)
    assert re.search(r"epoch 1 val: overall [0-9.]+", log)
    vdl_dir = os.path.join(base_run.results_dir, "vdl", "base")
    assert glob.glob(os.path.join(vdl_dir, "vdlrecords.*.log"))
    assert len(vdl_scalars(vdl_dir, vdl_tag("train", "loss"))) == STEPS
    assert len(vdl_scalars(vdl_dir, vdl_tag("train", "epoch_loss"))) == 1
    assert vdl_scalars(vdl_dir, vdl_tag("train", "epoch_loss"))[0] == pytest.approx(base_run.summary["history"][0]["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- 9. --TO_STATIC, --AMP

def test_to_static_training_matches_eager(world, base_run, tmp_path):
    """--TO_STATIC trains the same function through Paddle's static graph (Paddle's own Linear,
    LayerNorm and dropout ops instead of mmnas/ops/fast.py): with dropout 0 the weights after
    one epoch equal the eager run's."""
    cfg = make_cfg(world, tmp_path, "static", to_static=True, eval_every_epoch=False)
    train(cfg, progress=False)
    static = safe_load(ckpt_paths(cfg.ckpt_dir, "static", 1)[0])
    assert_same_weights(static, safe_load(base_run.params), rtol=1e-4)


def test_amp_flag_on_cpu_trains_in_float32_with_a_note(world, tmp_path, capsys):
    code, out, err = cli_main(["--RUN=train", f"--MODEL={world.yml}", "--VERSION=ampcpu", "--AMP=fp16",
                               "--EVAL_EE=False", f"--CKPT_DIR={tmp_path / 'ckpt'}",
                               f"--RESULTS_DIR={tmp_path / 'results'}"], capsys)
    assert code == 0, err
    assert "--AMP=fp16 applies on a GPU only" in err
    weights = safe_load(ckpt_paths(str(tmp_path / "ckpt"), "ampcpu", 1)[0])
    assert all(np.asarray(v).dtype == np.float32 for v in weights.values())


# ----------------------------------------------------------------------------- 10. sorted pieces

def test_sorted_pieces_sort_by_box_count_and_cover_the_batch():
    counts = np.array([30, 10, 100, 55, 10, 70, 20])
    pieces = sorted_pieces(counts, 3)
    assert [n for _, n in pieces] == [20, 55, 100]  # each piece's own largest n
    assert sorted(np.concatenate([idx for idx, _ in pieces]).tolist()) == list(range(7))
    assert all(counts[idx].max() == n for idx, n in pieces)
    assert [len(idx) for idx, _ in pieces] == [3, 2, 2]
    assert len(sorted_pieces(counts[:2], 4)) == 2  # no empty pieces
    assert len(sorted_pieces(np.full(8, 100), 2)) == 1  # equal n: nothing to save, one piece


def test_box_pieces_leave_the_update_unchanged(world, base_run, tmp_path):
    """Whole batches (box_pieces=1) vs the default sorted pieces, each trimmed to its own n."""
    assert base_run.cfg.train.box_pieces == 2
    cfg = make_cfg(world, tmp_path, "whole", box_pieces=1, eval_every_epoch=False)
    train(cfg, progress=False)
    whole = safe_load(ckpt_paths(cfg.ckpt_dir, "whole", 1)[0])
    assert_same_weights(whole, safe_load(base_run.params), rtol=1e-5)
