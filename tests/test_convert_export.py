"""PyTorch (openvqa) checkpoint conversion and static inference export.

Conversion must give the same network: a Paddle model -> torch layout -> back -> loaded into
a fresh model reproduces the logits, on seeded weights and on the golden reference weights.
Export must give the same numbers through `paddle.jit.load` and Paddle Inference, for any
batch size and region count.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmnas.config import ModelConfig, load_config  # noqa: E402
from mmnas.checkpoint_files import CheckpointError, load_weights, match_state_dict, safe_load  # noqa: E402
from mmnas.models import MMNasNet  # noqa: E402
from mmnas.models.convert import (TORCH_MISSING, convert_openvqa_checkpoint, paddle_to_torch_state,  # noqa: E402
                                  torch_to_paddle_state)
from mmnas.models.export import create_predictor, export_inference, predict, sample_inputs  # noqa: E402

from conftest import GOLDEN_DIR, SPEC_DIR  # noqa: E402

T, A = 50, 20
LSTM_TORCH = {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"}
LSTM_ALIASES = {"lstm.0.cell.weight_ih", "lstm.0.cell.weight_hh", "lstm.0.cell.bias_ih", "lstm.0.cell.bias_hh"}


def load_tool(name):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeded_model(seed, cfg=None):
    paddle.seed(seed)
    model = MMNasNet(cfg or load_config("tiny").model, T, A)
    model.eval()
    return model


def numpy_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def logits(model, feats, boxes, ids):
    with paddle.no_grad():
        return model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(ids)).numpy()


@pytest.fixture(scope="module")
def reference():
    """A tiny model with seeded random weights, its state and logits on a padded batch."""
    model = seeded_model(1)
    batch = sample_inputs(4, 12, T, seed=3)
    return model, numpy_state(model), batch, logits(model, *batch)


def fresh_model_with(state):
    model = seeded_model(2)
    model.set_state_dict(match_state_dict(model, state))
    return model


# ---- (a) conversion round trip ----------------------------------------------------------

def test_paddle_to_torch_has_torch_semantics(reference):
    _, state, _, _ = reference
    torch_state = paddle_to_torch_state(state)
    # Linear weights [in, out] -> [out, in]
    assert torch_state["adapter.frcn_linear.weight"].shape == (64, 2048)
    np.testing.assert_array_equal(torch_state["adapter.frcn_linear.weight"], state["adapter.frcn_linear.weight"].T)
    np.testing.assert_array_equal(torch_state["proj.weight"], state["proj.weight"].T)
    sq = "backbone.enc_list.0.mhatt.linear_q.weight"  # square: only the values tell
    np.testing.assert_array_equal(torch_state[sq], state[sq].T)
    # embedding, LSTM, biases and LayerNorm untouched; LSTM only under torch's names
    for key in ["embedding.weight", "lstm.weight_ih_l0", "lstm.bias_hh_l0", "proj.bias", "proj_norm.a_2"]:
        np.testing.assert_array_equal(torch_state[key], state[key])
    assert {k for k in torch_state if k.startswith("lstm.")} == LSTM_TORCH
    assert not any(".cell." in k for k in torch_state)
    assert set(torch_state) == set(state) - LSTM_ALIASES


def test_round_trip_reproduces_logits(reference):
    model, state, batch, expected = reference
    back = torch_to_paddle_state(paddle_to_torch_state(state))
    assert set(back) == set(state)
    for key in state:
        assert back[key].dtype == np.float32 and back[key].shape == state[key].shape, key
        np.testing.assert_array_equal(back[key], state[key])
    assert np.abs(logits(seeded_model(2), *batch) - expected).max() > 1e-3  # the load matters
    np.testing.assert_allclose(logits(fresh_model_with(back), *batch), expected, atol=1e-5, rtol=0)


def test_round_trip_golden_weights():
    g = json.load(open(os.path.join(GOLDEN_DIR, "model_tiny_config.json")))
    data = np.load(os.path.join(GOLDEN_DIR, "model_tiny_published.npz"))
    params = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    cfg = ModelConfig(hidden_size=g["hidden_size"], heads=g["heads"], rel_head_width=g["rel_head_width"],
                      rel_size=g["rel_size"], flat_mlp=g["flat_mlp"], glimpses=g["glimpses"],
                      flat_out=g["flat_out"], word_embed=g["word_embed"],
                      enc=g["published"]["enc"], dec=g["published"]["dec"])
    torch_state = paddle_to_torch_state(params)
    assert torch_state["proj.weight"].shape == (g["answer_size"], g["flat_out"])
    back = torch_to_paddle_state(torch_state)
    assert set(back) == set(params)
    model = MMNasNet(cfg, g["token_size"], g["answer_size"])
    model.set_state_dict(match_state_dict(model, back))
    model.eval()
    out = logits(model, data["region_feats"], data["boxes"], data["question_ids"])
    np.testing.assert_allclose(out, data["logits"], atol=1e-5, rtol=0)


def test_conversion_gives_released_key_layout():
    """A torch-layout dict shaped like openvqa mmnasnet_small converts to exactly the keys
    and shapes of state_dict_small.txt (large.txt has the same keys, only wider)."""
    path = os.path.join(SPEC_DIR, "state_dict_small.txt")
    shapes = {}
    for line in open(path):
        key, shape = line.split(" ", 1)
        shapes[key] = tuple(int(d) for d in shape.strip().strip("[]").replace("T", "7").replace("A", "5").split(","))
    paddle_like = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    torch_like = {k: np.zeros(v.shape[::-1] if ("linear" in k or k == "proj.weight") and v.ndim == 2 else v.shape,
                              np.float32) for k, v in paddle_like.items() if ".cell." not in k}
    out = torch_to_paddle_state(torch_like)
    assert {k: v.shape for k, v in out.items()} == shapes


def test_torch_to_paddle_refuses_paddle_layout(reference):
    with pytest.raises(CheckpointError, match="Paddle layout"):
        torch_to_paddle_state(reference[1])


# ---- (b) a real torch file through the tool ---------------------------------------------

def test_tool_converts_torch_pickle(reference, tmp_path, capsys):
    import torch  # the test extra installs the CPU build
    model, state, batch, expected = reference
    src, dst = str(tmp_path / "mmnasnet_tiny.pkl"), str(tmp_path / "out" / "tiny.pdparams")
    torch_state = {"module." + k: torch.from_numpy(v.copy()) for k, v in paddle_to_torch_state(state).items()}
    torch.save({"state_dict": torch_state, "epoch": 1, "lr_base": 1e-4}, src)

    summary = load_tool("convert_openvqa_ckpt").main([src, dst, "--MODEL", "tiny", "--answer-size", str(A)])
    assert (summary["token_size"], summary["answer_size"]) == (T, A)
    printed = capsys.readouterr().out
    assert dst in printed and f"{T}" in printed

    saved = safe_load(dst)  # a flat {name: float32 ndarray} dict with the Paddle key set
    assert set(saved) == set(state)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in saved.values())
    via_paddle = seeded_model(2)
    via_paddle.set_state_dict(paddle.load(dst))
    np.testing.assert_allclose(logits(via_paddle, *batch), expected, atol=1e-5, rtol=0)
    via_ours = seeded_model(2)
    load_weights(via_ours, dst)
    np.testing.assert_allclose(logits(via_ours, *batch), expected, atol=1e-5, rtol=0)


def test_tool_reports_mismatch(reference, tmp_path):
    import torch  # the test extra installs the CPU build
    src = str(tmp_path / "ckpt.pkl")
    torch.save({"state_dict": {k: torch.from_numpy(v.copy())
                               for k, v in paddle_to_torch_state(reference[1]).items()}}, src)
    tool = load_tool("convert_openvqa_ckpt")
    with pytest.raises(SystemExit) as e:
        tool.main([src, str(tmp_path / "a.pdparams"), "--MODEL", "tiny", "--answer-size", "3129"])
    assert "--answer-size 3129" in str(e.value.code) and "proj.weight" in str(e.value.code)
    mcan = os.path.join(REPO, "configs", "genotypes", "mcan.json")
    with pytest.raises(SystemExit) as e:
        tool.main([src, str(tmp_path / "b.pdparams"), "--MODEL", "tiny", "--ARCH_PATH", mcan])
    assert "does not fit the model" in str(e.value.code)
    assert not (tmp_path / "a.pdparams").exists() and not (tmp_path / "b.pdparams").exists()


def test_legacy_fp16_flat_torch_file(reference, tmp_path):
    """Pre-1.6 torch files are plain pickles, and some checkpoints are half precision or a
    bare state dict: all convert to float32 Paddle weights."""
    import torch  # the test extra installs the CPU build
    model, state, batch, expected = reference
    src, dst = str(tmp_path / "legacy.pkl"), str(tmp_path / "legacy.pdparams")
    torch.save({k: torch.from_numpy(v.copy()).half() for k, v in paddle_to_torch_state(state).items()},
               src, _use_new_zipfile_serialization=False)
    convert_openvqa_checkpoint(src, dst, load_config("tiny").model)
    loaded = seeded_model(2)
    load_weights(loaded, dst)
    assert all(v.dtype == np.float32 for v in safe_load(dst).values())
    np.testing.assert_allclose(logits(loaded, *batch), expected, atol=0.05, rtol=0)  # fp16 rounding


def test_paddle_file_is_not_converted(reference, tmp_path):
    from mmnas.checkpoint_files import atomic_save
    src = str(tmp_path / "already.pdparams")
    atomic_save(reference[1], src)
    with pytest.raises(SystemExit) as e:
        load_tool("convert_openvqa_ckpt").main([src, str(tmp_path / "out.pdparams")])
    assert "Paddle weights file already" in str(e.value.code)


# ---- (c) without torch ------------------------------------------------------------------

def test_tool_without_torch_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    src = tmp_path / "ckpt.pkl"
    src.write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(SystemExit) as e:
        load_tool("convert_openvqa_ckpt").main([str(src), str(tmp_path / "out.pdparams")])
    assert TORCH_MISSING in str(e.value.code)
    assert not (tmp_path / "out.pdparams").exists()


def test_mmnas_does_not_import_torch():
    code = ("import sys, mmnas.models, mmnas.models.convert, mmnas.models.export, mmnas.checkpoint_files, mmnas.engine.checkpoint; "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                            capture_output=True, text=True)
    assert result.returncode == 0, "importing mmnas pulled in torch: " + result.stderr[-2000:]


# ---- (d) static export ------------------------------------------------------------------

def test_export_matches_dygraph(reference, tmp_path):
    model = seeded_model(1)
    model.train()  # export must switch dropout off by itself
    prefix = str(tmp_path / "inference" / "model")
    files = export_inference(model, prefix)
    assert not model.training
    assert os.path.isfile(files["model"]) and files["params"] == prefix + ".pdiparams"
    jit_model = paddle.jit.load(prefix)
    predictor = create_predictor(prefix)
    for b, n in [(3, 12), (2, 20)]:
        feats, boxes, ids = sample_inputs(b, n, T, seed=b * 100 + n)
        expected = logits(model, feats, boxes, ids)
        assert expected.shape == (b, A)
        with paddle.no_grad():
            got = jit_model(paddle.to_tensor(feats), paddle.to_tensor(boxes), paddle.to_tensor(ids)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(predict(predictor, feats, boxes, ids), expected, atol=1e-5, rtol=0)


def test_export_tool_default_path(reference, tmp_path, monkeypatch, capsys):
    from mmnas.checkpoint_files import atomic_save
    ckpt = tmp_path / "ckpt" / "epoch3.pdparams"
    atomic_save(reference[1], str(ckpt))
    monkeypatch.chdir(tmp_path)
    files = load_tool("export_inference").main(["--MODEL", "tiny", "--CKPT_PATH", str(ckpt)])
    assert files["params"] == os.path.join("results", "inference", "epoch3", "model.pdiparams")
    assert os.path.isfile(files["model"]) and "verified" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        load_tool("export_inference").main(["--MODEL", "tiny", "--CKPT_PATH", str(tmp_path / "nope.pdparams")])
    assert "not found" in str(e.value.code)


def test_export_on_a_full_disk_keeps_the_earlier_export(reference, tmp_path, mount_tmpfs):
    """Real fault: a tmpfs with room for one export; exporting again over it fails with one
    sentence naming the file and --out, and the earlier export is intact, no temporary left."""
    from mmnas.checkpoint_files import atomic_save
    ckpt = tmp_path / "epoch3.pdparams"
    atomic_save(reference[1], str(ckpt))
    tool = load_tool("export_inference")
    first = tmp_path / "first"
    tool.main(["--MODEL", "tiny", "--CKPT_PATH", str(ckpt), "--out", str(first / "model"), "--no-verify"])
    exported = {name: (first / name).read_bytes() for name in os.listdir(first)}
    assert any(name.endswith(".pdiparams") for name in exported)
    full = mount_tmpfs(tmp_path / "full", sum(map(len, exported.values())) + 64 * 1024)
    for name, data in exported.items():
        (full / name).write_bytes(data)
    with pytest.raises(SystemExit) as e:
        tool.main(["--MODEL", "tiny", "--CKPT_PATH", str(ckpt), "--out", str(full / "model"), "--no-verify"])
    assert str(e.value.code).startswith(f"error: cannot write {full / 'model.pdiparams'}: No space left on device")
    assert "--out" in str(e.value.code)
    assert sorted(os.listdir(full)) == sorted(exported)
    for name, data in exported.items():
        assert (full / name).read_bytes() == data


def test_export_tool_names_what_it_does_not_export(reference, tmp_path):
    """Grounding/matching configs and checkpoints are refused by what they are, not as 'not an
    MMNasNet checkpoint'; a hidden-size mismatch lists the tiny config too."""
    from mmnas.checkpoint_files import atomic_save
    tool = load_tool("export_inference")
    ckpt = tmp_path / "epoch3.pdparams"
    atomic_save(reference[1], str(ckpt))
    with pytest.raises(SystemExit) as e:
        tool.main(["--MODEL", "vgd_tiny", "--CKPT_PATH", str(ckpt)])
    assert "--MODEL=vgd_tiny is a grounding model" in str(e.value.code) and "dygraph" in str(e.value.code)
    headless = tmp_path / "headless.pdparams"  # the backbone of an MMNasNet without the answer layer
    atomic_save({k: v for k, v in reference[1].items() if not k.startswith("proj.")}, str(headless))
    with pytest.raises(SystemExit) as e:
        tool.main(["--MODEL", "tiny", "--CKPT_PATH", str(headless)])
    assert "no answer layer (`proj.weight`)" in str(e.value.code) and "grounding or matching" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        tool.main(["--MODEL", "small", "--CKPT_PATH", str(ckpt)])
    assert "--MODEL tiny: 64, small: 512, large: 1024" in str(e.value.code)
