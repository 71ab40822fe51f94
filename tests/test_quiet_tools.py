"""What the tools print: none of Paddle's known noise (runtime.PADDLE_WARNINGS, PADDLE_LOG_LINES)
from tools/ and bench/ entry points, one line naming the interpreter when Paddle is not installed
in it, a weights-mismatch error that starts with what to do, and progress bars that end at their
total."""
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mmnas import progress, runtime
from mmnas.checkpoint_files import MISMATCH_LISTED, CheckpointError, load_weights
from mmnas.config import load_config
from mmnas.data.synthetic import make_synthetic_vqa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = runtime.PADDLE_WARNINGS + runtime.PADDLE_LOG_LINES


def run_script(script, args, cwd, python=(sys.executable,)):
    """A repo script in a fresh interpreter, output piped, without the filters this test process set."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "MMNAS_RUNTIME_SET")}
    return subprocess.run(list(python) + [os.path.join(REPO, script)] + [str(a) for a in args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def assert_no_noise(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    for pattern in NOISE:
        assert pattern not in proc.stdout + proc.stderr, f"{pattern!r} printed:\n{proc.stderr[-3000:]}"
    assert "\r" not in proc.stderr  # bars wrote lines into the pipe, not in-place redraws


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny MMNasNet's weights file (T=30, A=12)."""
    import paddle
    from mmnas.models import MMNasNet
    folder = tmp_path_factory.mktemp("weights")
    paddle.seed(0)
    model = MMNasNet(load_config("tiny").model, 30, 12)
    path = folder / "tiny.pdparams"
    paddle.save(model.state_dict(), str(path))
    return model, path


DATA_PARALLEL_START = """import paddle.distributed as dist


def work():
    dist.init_parallel_env()


if __name__ == "__main__":
    dist.spawn(work, nprocs=2, backend="gloo")
"""


def test_the_noise_is_real_without_the_filter(tmp_path):
    """The patterns match what Paddle prints when nothing filters it (so their absence below means
    something): the import warning and the PIR lines of exporting a masked fill (as attention
    does), and the start of two gloo processes with one of PADDLE_FLAGS set (as --NPROCS=2)."""
    code = ("import paddle\n"
            "from paddle.static import InputSpec\n"
            "class MaskedFill(paddle.nn.Layer):\n"
            "    def forward(self, scores, mask):\n"
            "        return paddle.where(mask, paddle.full([1], -1e9, scores.dtype), scores)\n"
            "paddle.jit.save(MaskedFill(), %r, input_spec=[InputSpec([None, 4], 'float32', 'scores'),\n"
            "                                          InputSpec([None, 4], 'bool', 'mask')])\n" % str(tmp_path / "m"))
    export = tmp_path / "export_masked_fill.py"  # a file: paddle.jit reads the layer's source
    export.write_text(code)
    data_parallel = tmp_path / "data_parallel_start.py"
    data_parallel.write_text(DATA_PARALLEL_START)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", *runtime.PADDLE_FLAGS)}
    printed = ""
    for script, flags in ((export, {}), (data_parallel, runtime.PADDLE_FLAGS)):
        proc = subprocess.run([sys.executable, str(script)], env={**env, **flags}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed += proc.stderr
    for pattern in NOISE:
        assert pattern in printed, pattern


def test_tools_and_bench_print_none_of_the_known_noise(tmp_path, tiny_weights):
    _, weights = tiny_weights
    made = run_script("tools/make_synthetic_gqa.py", ["--out", tmp_path / "data", "--train-images", 6,
                                                      "--val-images", 2, "--testdev-images", 2, "--test-images", 1],
                      tmp_path)
    assert_no_noise(made)
    assert "synthetic GQA in" in made.stdout
    exported = run_script("tools/export_inference.py", ["--MODEL", "tiny", "--CKPT_PATH", weights,
                                                        "--out", tmp_path / "export" / "model"], tmp_path)
    assert_no_noise(exported)
    assert "verified: Paddle Inference matches dygraph" in exported.stdout
    checked = run_script("tools/check_feats.py", [tmp_path / "data" / "gqa" / "feats" / "gqa-frcn"], tmp_path)
    assert checked.returncode in (0, 1), checked.stderr  # 1: files flagged (few regions); not our concern
    assert not any(pattern in checked.stderr for pattern in NOISE), checked.stderr
    # --defaults skips configure() (export_inference.py above calls it) but not the filter
    bench = run_script("bench/loader.py", ["--questions", 10, "--questions-per-image", 5, "--max-boxes", 12,
                                           "--workers", 0, "--no-packed", "--batch-size", 4, "--defaults"], tmp_path)
    assert_no_noise(bench)
    assert '"bench": "loader"' in bench.stdout


@pytest.mark.parametrize("script, args", [("run.py", ["--RUN=train"]),
                                          ("tools/export_inference.py", ["--CKPT_PATH", "x.pdparams"])])
def test_without_paddle_one_line_names_the_interpreter_and_the_install_command(tmp_path, script, args):
    """`-S`: the same interpreter without its site-packages, i.e. a Python where Paddle is not installed."""
    proc = run_script(script, args, tmp_path, python=(sys.executable, "-S"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: paddlepaddle") and "not installed" in lines[0]
    assert f"({sys.executable}, Python " in lines[0]
    assert f"{sys.executable} -m pip install -r {os.path.join(REPO, 'requirements.txt')} -e {REPO}" in lines[0]


def test_mismatch_error_leads_with_what_to_do_and_names_few_keys(tmp_path, tiny_weights):
    from mmnas.models import MMNasNet
    _, weights = tiny_weights
    # another genotype: the same file against a model whose layers differ (hundreds of keys)
    mcan = os.path.join(REPO, "configs", "genotypes", "mcan.json")
    other = MMNasNet(load_config("tiny", mcan).model, 30, 12)
    with pytest.raises(CheckpointError) as info:
        load_weights(other, str(weights))
    lines = str(info.value).splitlines()
    assert lines[0] == (f"{weights} does not fit the model: it was trained with another config or genotype; "
                        "give the one it was trained with (--MODEL, and --ARCH_PATH for a searched genotype).")
    assert len(lines) <= 1 + 2 + MISMATCH_LISTED + 1 and max(map(len, lines)) < 300, lines
    listed = [line for line in lines[1:] if line.startswith(("  missing keys", "  unexpected keys"))]
    assert listed and all(line.count(",") <= MISMATCH_LISTED for line in listed), listed
    # another answer dictionary: the first line says which data to use
    model = MMNasNet(load_config("tiny").model, 30, 13)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, str(weights))
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{weights} does not fit the model: dimension 1 (13 vs 12): the answer vocabulary")
    assert first.endswith("use the data (--DATA_ROOT) and data.answer_dict it was trained with.")


def test_preload_and_eval_bars_end_at_their_total(tmp_path, monkeypatch):
    """A bar over work longer than SHOW_AFTER_S (here 0) ends with N/N, also the preload bar that
    is zipped with the image list."""
    from mmnas.data.dataset import VQADataset
    from mmnas.data.vocab import build_vocab
    make_synthetic_vqa(str(tmp_path / "data"), n_train_images=9, n_val_images=7, n_test_images=2, n_vg_images=2,
                       questions_per_image=2, seed=3, min_boxes=10, max_boxes=12)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "LOG_MIN_INTERVAL_S", 0.0)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    vocab = build_vocab(str(tmp_path / "data"), str(tmp_path / "cache"), progress=True)
    dataset = VQADataset(str(tmp_path / "data"), "val", vocab, preload=True, preload_workers=2, progress=True)
    lines = log.getvalue().splitlines()
    assert dataset.num_images == 7 and "preload val: 100% 7/7" in lines[-1], lines
    descs = [line.split(":", 1)[0] for line in lines]
    assert {"token vocab", "preload val"} <= set(descs), lines
    last_lines = [line for i, line in enumerate(lines) if i + 1 == len(lines) or descs[i + 1] != descs[i]]
    assert all(": 100% " in line for line in last_lines), lines
