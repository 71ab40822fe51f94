"""A run's output says what the run does: no Paddle import warnings ("No ccache found", "PLEASE
USE OMP_NUM_THREADS WISELY"), progress bars that write a few plain lines into a log file instead
of thousands of carriage returns, a --MODEL help naming every config, and a standalone --RUN=val
logging beside its training run (log_run_<CKPT_V>.txt)."""
import io
import os
import subprocess
import sys

import pytest

from mmnas import cli, runtime
from mmnas.config import MODEL_ALIASES
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas import progress
from mmnas.progress import LOG_STEP_PERCENT, progress_bar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PADDLE_NOISE = ("No ccache found", "PLEASE USE OMP_NUM_THREADS WISELY", "OMP_NUM_THREADS set to", "find free ports",
                *runtime.PADDLE_WARNINGS, *runtime.PADDLE_LOG_LINES)  # the last: GLOO, FLAGS frame, glog lines


def run_py(args, cwd, env_extra=None):
    """run.py in a fresh interpreter with stdout/stderr piped (not a terminal), as in a log file."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM", "MMNAS_RUNTIME_SET", "PYTHONWARNINGS")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run.py")] + [str(a) for a in args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)
    return proc


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    make_synthetic_vqa(str(root / "data"), n_train_images=40, n_val_images=10, n_test_images=4, n_vg_images=4,
                       questions_per_image=2, seed=5, min_boxes=10, max_boxes=14)
    yml = root / "tiny.yml"
    yml.write_text(f"base: {os.path.join(REPO, 'configs', 'vqa', 'mmnasnet_tiny.yml')}\n"
                   "model:\n  hidden_size: 32\n  flat_mlp: 32\n  flat_out: 64\n"
                   "train:\n  batch_size: 16\n  eval_batch_size: 8\n")
    common = [f"--MODEL={yml}", f"--DATA_ROOT={root / 'data'}", f"--CKPT_DIR={root / 'ckpt'}",
              f"--RESULTS_DIR={root / 'results'}"]
    return root, common


def assert_quiet(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for noise in PADDLE_NOISE:
        assert noise not in output, f"{noise!r} in the output:\n{output[-3000:]}"
    assert "\r" not in output  # progress bars wrote lines, not in-place redraws
    assert max(len(line) for line in output.splitlines()) < 300


def test_train_in_two_processes_and_standalone_val_are_quiet_and_val_logs_beside_training(tiny_world):
    root, common = tiny_world
    # two CPU processes: the spawned ones import Paddle too (their environment is inherited)
    trained = run_py(["--RUN=train", "--SPLIT=train", "--VERSION=quiet", "--MAX_EPOCH=1", "--NPROCS=2",
                      "--EVAL_EE=False"] + common, root)
    assert_quiet(trained)
    assert os.path.isfile(root / "ckpt" / "ckpt_quiet" / "epoch1.pdparams")

    val = run_py(["--RUN=val", "--CKPT_V=quiet", "--CKPT_E=1"] + common, root)
    assert_quiet(val)
    bar_lines = [line for line in val.stderr.splitlines() if line.startswith("eval:")]
    assert len(bar_lines) <= 100 // LOG_STEP_PERCENT + 1, val.stderr  # none when it took under a second
    logs = sorted(os.listdir(root / "results" / "log"))
    assert logs == ["log_run_quiet.txt"], logs  # no timestamp-named log for the val run
    with open(root / "results" / "log" / "log_run_quiet.txt", encoding="utf-8") as f:
        log = f.read()
    assert "quiet_epoch1 val: overall" in log and "epoch 1/1: loss" in log


def test_a_user_set_omp_num_threads_is_passed_to_paddle_untouched(tiny_world):
    """Only our own thread setting is kept out of the import; the user's variable is theirs."""
    root, common = tiny_world
    proc = run_py(["--RUN=val", "--CKPT_PATH=missing.pdparams"] + common, root, {"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 2 and "missing.pdparams does not exist" in proc.stderr
    assert "OMP_NUM_THREADS set to 2" in proc.stderr  # Paddle's own message, for the user's own setting
    assert "No ccache found" not in proc.stderr


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_writes_a_line_per_few_percent_when_not_a_terminal(monkeypatch):
    log = io.StringIO()
    for _ in progress_bar(range(10_000), desc="fast", file=log):
        pass
    assert log.getvalue() == ""  # done within a second (SHOW_AFTER_S): no bar at all
    monkeypatch.setattr(progress, "LOG_MIN_INTERVAL_S", 0.0)  # as if every item took a while
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    log = io.StringIO()
    bar = progress_bar(range(10_000), desc="epoch 1/13", file=log)
    for i in bar:
        if i % 500 == 0:
            bar.set_postfix(loss=f"{i / 3:.4f}", refresh=False)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 100 // LOG_STEP_PERCENT <= len(lines) <= 100 // LOG_STEP_PERCENT + 1, lines
    assert lines[-1].startswith("epoch 1/13: 100% 10000/10000") and "loss=" in lines[-1]
    assert all(len(line) < 120 for line in lines)
    # manual updates (check_feats style) and an unknown total
    log = io.StringIO()
    bar = progress_bar(total=7, desc="check feats", unit="file", file=log)
    for _ in range(7):
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("check feats: 100% 7/7")
    log = io.StringIO()
    for _ in progress_bar(iter(range(50)), desc="features", file=log):
        pass
    assert "\r" not in log.getvalue() and 1 <= len(log.getvalue().splitlines()) <= 3


def test_progress_bar_redraws_in_place_in_a_terminal():
    term = _Terminal()
    for _ in progress_bar(range(100), desc="x", file=term, mininterval=0, delay=0):
        pass
    assert "\r" in term.getvalue()


def test_model_help_lists_every_config():
    help_text = " ".join(cli.build_parser().format_help().split())
    for name in MODEL_ALIASES:
        assert name in help_text
    assert "mmnasnet (= small)" in help_text and "search_tiny" in help_text


@pytest.mark.parametrize("argv, version", [
    (["--RUN=val", "--CKPT_V=small_t", "--CKPT_E=13"], "small_t"),
    (["--RUN=test", "--CKPT_PATH=ckpt/x/MMNasNet-small_model_full.pdparams"], "MMNasNet-small_model_full"),
    (["--RUN=val", "--CKPT_V=small_t", "--CKPT_E=13", "--VERSION=mine"], "mine"),
    (["--RUN=train", "--RESUME=True", "--CKPT_V=old", "--CKPT_E=2"], "old"),
])
def test_default_version_of_eval_runs_is_the_checkpoints(argv, version):
    args = cli.build_parser().parse_args(argv)
    assert cli.config_from_args(args).version == version


def test_default_version_of_a_fresh_training_is_a_timestamp():
    args = cli.build_parser().parse_args(["--RUN=train"])
    assert cli.default_version(args).replace("_", "").isdigit()
