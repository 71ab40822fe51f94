"""The speed work changes no results: each faster op against the formula it replaces (values
and gradients, random inputs with padding), the whole model fast vs reference, Paddle's
stride flag on/off, the runtime settings, FLOP counting, and the packed feature store."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from mmnas.config import load_config
from mmnas.models import MMNasNet
from mmnas.ops import fast
from mmnas.ops.layer_norm import LayerNorm, reference_layer_norm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _t(a, grad=False):
    t = paddle.to_tensor(np.asarray(a, dtype="float32"))
    t.stop_gradient = not grad
    return t


def _rows_with_padding(rng, shape, scale):
    """Random rows at `scale`, plus constant rows: all zero (padding) and all 3.25."""
    x = rng.standard_normal(shape).astype("float32") * scale + rng.uniform(-1, 1)
    x[0, -1] = 0.0
    x[-1, 0] = 3.25
    return x


# ---- LayerNorm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fast_fn", [fast.layer_norm_unbiased, fast._layer_norm_unbiased_fused],
                         ids=["cpu_closed_form", "fused_op"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
@pytest.mark.parametrize("size", [64, 512])
def test_fast_layer_norms_match_formula_values_and_gradients(fast_fn, scale, size):
    """Both fast forms (the CPU one with its hand-written backward, and the fused-op one used off
    CPU) against the formula evaluated in float64 (the float32 op-by-op formula itself is off by
    up to ~2e-5 when |mean| >> std: it loses digits in x - mean; the fast forms do not)."""
    rng = np.random.default_rng(size)
    x = _rows_with_padding(rng, (3, 7, size), scale)
    a = rng.uniform(0.5, 1.5, size).astype("float32")
    b = rng.uniform(-0.5, 0.5, size).astype("float32")
    g = rng.standard_normal(x.shape).astype("float32")
    results = []
    for fn, dtype in ((fast_fn, "float32"), (reference_layer_norm, "float64"),
                      (reference_layer_norm, "float32")):
        xt, at, bt = (paddle.to_tensor(v.astype(dtype), stop_gradient=False) for v in (x, a, b))
        y = fn(xt, at, bt, 1e-6)
        (y * paddle.to_tensor(g.astype(dtype))).sum().backward()
        results.append((y.numpy().astype("float64"), [t.grad.numpy().astype("float64") for t in (xt, at, bt)]))
    (out, grads), (true, true_grads), (ref32, _) = results
    np.testing.assert_allclose(out, true, atol=1e-5, rtol=0)
    assert np.abs(out - true).max() <= np.abs(ref32 - true).max() + 1e-6  # never worse than op by op
    # constant rows (padding) give the shift exactly, as the formula does
    np.testing.assert_array_equal(out[0, -1], b)
    np.testing.assert_array_equal(out[-1, 0], b)
    # the formula's x-gradient of a constant row is NaN (d sqrt at 0); the fused one is finite
    assert np.isnan(true_grads[0][0, -1]).all() and np.isfinite(grads[0]).all()
    for row in ((0, -1), (-1, 0)):
        grads[0][row] = true_grads[0][row] = 0
    for got, want in zip(grads, true_grads):
        tol = 1e-5 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol, rtol=1e-4)


def test_cpu_kernels_with_frozen_weights_and_empty_inputs():
    """Frozen LayerNorm / Linear parameters get no gradient (Paddle refuses one from a PyLayer),
    the input still does; empty tensors take the plain path."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 16)).astype("float32")
    ln, lin = LayerNorm(16), fast.Linear(16, 8)
    for p in (ln.a_2, ln.b_2, lin.weight):
        p.stop_gradient = True
    grads = []
    for freeze in (True, False):
        for p in (ln.a_2, ln.b_2, lin.weight):
            p.stop_gradient = freeze
        xt = _t(x, grad=True)
        lin(ln(xt)).sum().backward()
        grads.append(xt.grad.numpy())
        assert (ln.a_2.grad is None) == freeze and (lin.weight.grad is None) == freeze
        assert lin.bias.grad is not None
        for p in (ln.a_2, ln.b_2, lin.weight, lin.bias):
            p.clear_gradient()
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)
    empty = _t(np.zeros((0, 5, 16)), grad=True)
    assert ln(empty).shape == [0, 5, 16] and lin(empty).shape == [0, 5, 8]
    assert fast.masked_softmax(_t(np.zeros((0, 2, 3, 4))), None).shape == [0, 2, 3, 4]


def _kernel_outputs():
    """Values and gradients of every numpy kernel on inputs spanning several blocks."""
    rng = np.random.default_rng(4)
    out = []
    x = _t(rng.standard_normal((3000, 512)), grad=True)
    y = LayerNorm(512)(x)
    (y * _t(rng.standard_normal(y.shape))).sum().backward()
    out += [y.numpy(), x.grad.numpy()]
    s = _t(rng.standard_normal((40, 8, 30, 100)), grad=True)
    mask = paddle.to_tensor(rng.random((40, 1, 1, 100)) < 0.3)
    a = fast.masked_softmax(s, mask)
    (a * _t(rng.standard_normal(a.shape))).sum().backward()
    out += [a.numpy(), s.grad.numpy()]
    z = _t(rng.standard_normal((700, 1000)), grad=True)
    b = fast.relu_clamped_log(z, 1e-6)
    (b * _t(rng.standard_normal(b.shape))).sum().backward()
    out += [b.numpy(), z.grad.numpy(), fast.dropout_mask(11, 3 << 20, 0.1)]
    return out


def test_cpu_kernels_give_the_same_results_on_any_thread_count(monkeypatch):
    """Blocks are independent (dropout chunks are seeded by their index), so 1 and 2 threads
    agree bit for bit; the second run really uses the pool."""
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    one = _kernel_outputs()
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    two = _kernel_outputs()
    assert fast._pool is not None and fast._pool._max_workers == 2
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_cpu_kernels_work_in_a_forked_child(monkeypatch):
    """The kernels' thread pool does not survive fork(); a forked child makes its own."""
    import multiprocessing as mp
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    x = _t(np.random.default_rng(0).standard_normal((3000, 512)))  # several row blocks: uses the pool
    expected = LayerNorm(512)(x).numpy()
    assert fast._pool is not None
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_layer_norm_in_child, (x.numpy(),)).get(timeout=60)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _layer_norm_in_child(x):
    return LayerNorm(512)(paddle.to_tensor(x)).numpy()


def test_layer_norm_module_uses_released_parameter_names():
    ln = LayerNorm(8)
    assert sorted(ln.state_dict()) == ["a_2", "b_2"]


# ---- Linear ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 16), (3, 9, 16), (2, 4, 6, 16)])
@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_fast_linear_matches_paddle_linear(shape, x_needs_grad):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype("float32")
    x[..., -1, :] = 0  # a padding row
    w = rng.standard_normal((16, 24)).astype("float32") / 4
    b = rng.standard_normal(24).astype("float32")
    g = rng.standard_normal(shape[:-1] + (24,)).astype("float32")
    results = []
    for fn in (fast.linear, F.linear):
        xt, wt, bt = _t(x, x_needs_grad), _t(w, True), _t(b, True)
        y = fn(xt, wt, bt)
        (y * _t(g)).sum().backward()
        results.append((y.numpy(), xt.grad, wt.grad.numpy(), bt.grad.numpy()))
    (y1, dx1, dw1, db1), (y2, dx2, dw2, db2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw1, dw2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db1, db2, rtol=1e-5, atol=1e-4)
    if x_needs_grad:
        np.testing.assert_allclose(dx1.numpy(), dx2.numpy(), rtol=1e-5, atol=1e-5)
    else:
        assert dx1 is None and dx2 is None


def test_fast_linear_is_a_paddle_linear_with_the_same_parameters():
    layer = fast.Linear(4, 3)
    assert isinstance(layer, paddle.nn.Linear)
    assert sorted(layer.state_dict()) == ["bias", "weight"] and layer.weight.shape == [4, 3]


# ---- softmax and the RSA log bias ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (40, 8, 30, 100)])  # the second runs in several chunks
@pytest.mark.parametrize("masked", [True, False])
def test_numpy_masked_softmax_matches_where_then_softmax(shape, masked):
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 4).astype("float32")
    g = rng.standard_normal(shape).astype("float32")
    mask = None
    if masked:
        mask = rng.random((shape[0], 1, 1, shape[-1])) < 0.3
        mask[0] = True  # a sample with every key padded: uniform weights, as masked_fill gives
    results = []
    for fast_path in (True, False):
        xt = _t(x, grad=True)
        mt = None if mask is None else paddle.to_tensor(mask)
        if fast_path:
            y = fast.masked_softmax(xt, mt)
        else:
            z = xt if mt is None else paddle.where(mt, paddle.full([1], -1e9, "float32"), xt)
            y = F.softmax(z, axis=-1)
        (y * _t(g)).sum().backward()
        results.append((y.numpy(), xt.grad.numpy()))
    (y1, d1), (y2, d2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d1, d2, rtol=1e-4, atol=1e-6)
    if masked:
        np.testing.assert_allclose(y1[0], 1.0 / shape[-1], rtol=1e-6)
        assert (y1[np.broadcast_to(mask, shape)][len(y1[0].ravel()):] == 0).all()  # other padded keys: exactly 0


def test_relu_clamped_log_matches_relu_clip_log():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 5, 5, 70000 // 75 + 1)).astype("float32")
    z.ravel()[:4] = [0.0, 1e-6, 2e-6, -1.0]  # at, just above and below the floor
    g = rng.standard_normal(z.shape).astype("float32")
    results = []
    for fn in (lambda t: fast.relu_clamped_log(t, 1e-6),
               lambda t: paddle.log(paddle.clip(F.relu(t), min=1e-6))):
        zt = _t(z, grad=True)
        y = fn(zt)
        (y * _t(g)).sum().backward()
        results.append((y.numpy(), zt.grad.numpy()))
    (y1, d1), (y2, d2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)
    assert (d1.ravel()[[0, 3]] == 0).all() and (d1.ravel()[[1, 2]] != 0).all()


# ---- Dropout ---------------------------------------------------------------------------------

def test_dropout_is_identity_in_eval():
    x = _t(np.random.default_rng(0).standard_normal((4, 50)))
    layer = fast.Dropout(0.3)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert fast.Dropout(0.0)(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_with_probability_1_minus_p_and_scales(p):
    x = _t(np.random.default_rng(0).uniform(1, 2, (64, 100, 64)), grad=True)
    paddle.seed(11)
    y = fast.dropout(x, p)
    kept = y.numpy() != 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma
    np.testing.assert_allclose(y.numpy()[kept], x.numpy()[kept] / (1 - p), rtol=1e-6)
    (y * 3).sum().backward()  # gradient: the same mask and scale
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 3 / (1 - p), 0), rtol=1e-6)
    # masks differ from call to call, but paddle.seed reproduces the whole sequence
    second = fast.dropout(x, p).numpy() != 0
    assert (second != kept).any()
    paddle.seed(11)
    np.testing.assert_array_equal(fast.dropout(x, p).numpy() != 0, kept)


@pytest.mark.parametrize("shape", [(7, 33), (3, 1100, 1000)])  # the second spans several mask chunks
def test_relu_dropout_equals_relu_then_dropout(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype("float32")
    g = rng.standard_normal(shape).astype("float32")
    outs = []
    for fn in (lambda t: fast.relu_dropout(t, 0.3), lambda t: fast.dropout(F.relu(t), 0.3)):
        xt = _t(x, grad=True)
        paddle.seed(7)
        y = fn(xt)
        (y * _t(g)).sum().backward()
        outs.append((y.numpy(), xt.grad.numpy()))
    (y1, d1), (y2, d2) = outs
    np.testing.assert_array_equal(y1, y2)  # -0.0 == 0.0
    np.testing.assert_array_equal(d1, d2)
    positives = int((x > 0).sum())  # dropout still applies: kept share of them 0.7 within 5 sigma
    assert abs((y1 > 0).sum() / positives - 0.7) < 5 * math.sqrt(0.21 / positives)


def test_dropout_layers_use_the_fast_path_only_in_paddle_default_mode():
    x = _t(np.ones((8, 8)))
    paddle.seed(2)
    a = fast.Dropout(0.5)(x).numpy()
    paddle.seed(2)
    np.testing.assert_array_equal(a, fast.dropout(x, 0.5).numpy())
    paddle.seed(2)
    other = fast.Dropout(0.5, mode="downscale_in_infer")(x).numpy()
    assert set(np.unique(other)) <= {0.0, 1.0}  # Paddle's op, unscaled in training


# ---- the whole model ---------------------------------------------------------------------------

def _inputs(rng, b=3, n=11, vocab=40):
    feats = rng.uniform(0, 2, (b, n, 2048)).astype("float32")
    x1 = rng.uniform(0, 300, (b, n, 2))
    boxes = np.concatenate([x1, x1 + rng.uniform(5, 150, (b, n, 2))], -1).astype("float32")
    ids = rng.integers(1, vocab, (b, 14)).astype("int64")
    feats[0, 7:] = 0; boxes[0, 7:] = 0  # padded regions
    feats[2, 9:] = 0; boxes[2, 9:] = 0
    ids[0, 5:] = 0; ids[1, 9:] = 0  # padded tokens
    return feats, boxes, ids


def _logits_and_grads(model, feats, boxes, ids, targets):
    logits = model(_t(feats), None, _t(boxes), paddle.to_tensor(ids))
    loss = F.binary_cross_entropy_with_logits(logits, _t(targets), reduction="sum")
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    return logits.numpy(), grads


def test_model_with_fast_ops_matches_reference_ops(monkeypatch):
    """Logits and every parameter gradient, fast ops vs the plain formulas, padding included."""
    paddle.seed(3)
    cfg = load_config("tiny").model
    cfg.dropout = 0.0  # both runs must see the same function (train mode: the LSTM backward needs it)
    model = MMNasNet(cfg, token_size=40, answer_size=17)
    rng = np.random.default_rng(0)
    feats, boxes, ids = _inputs(rng)
    targets = (rng.random((3, 17)) < 0.2).astype("float32")
    fast_logits, fast_grads = _logits_and_grads(model, feats, boxes, ids, targets)
    monkeypatch.setattr(fast, "use_fast", lambda x: False)
    monkeypatch.setattr(LayerNorm, "forward", lambda self, x: reference_layer_norm(x, self.a_2, self.b_2, self.eps))
    ref_logits, ref_grads = _logits_and_grads(model, feats, boxes, ids, targets)
    np.testing.assert_allclose(fast_logits, ref_logits, atol=1e-5, rtol=0)
    assert sorted(fast_grads) == sorted(ref_grads)
    for name in ref_grads:
        scale = max(1e-2, float(np.abs(ref_grads[name]).max()))  # floor: grads that are 0 in exact math
        np.testing.assert_allclose(fast_grads[name], ref_grads[name], atol=1e-4 * scale, rtol=1e-3, err_msg=name)


def test_fast_kernels_switch_off_by_environment(monkeypatch):
    """MMNAS_FAST_KERNELS=0 takes exactly the plain path (the one use_fast=False selects), and
    that path agrees with the kernels; unset, the kernels run again."""
    paddle.seed(5)
    cfg = load_config("tiny").model
    cfg.dropout = 0.0
    model = MMNasNet(cfg, token_size=40, answer_size=17)
    rng = np.random.default_rng(2)
    feats, boxes, ids = _inputs(rng)
    targets = (rng.random((3, 17)) < 0.2).astype("float32")
    probe = _t(feats)
    assert fast.use_fast(probe)
    fast_logits, fast_grads = _logits_and_grads(model, feats, boxes, ids, targets)
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv("MMNAS_FAST_KERNELS", off)
        assert not fast.use_fast(probe)
    env_logits, env_grads = _logits_and_grads(model, feats, boxes, ids, targets)
    monkeypatch.delenv("MMNAS_FAST_KERNELS")
    with monkeypatch.context() as m:
        m.setattr(fast, "use_fast", lambda x: False)
        plain_logits, plain_grads = _logits_and_grads(model, feats, boxes, ids, targets)
    np.testing.assert_array_equal(env_logits, plain_logits)
    for name in plain_grads:
        np.testing.assert_array_equal(env_grads[name], plain_grads[name], err_msg=name)
    np.testing.assert_allclose(env_logits, fast_logits, atol=1e-5, rtol=0)
    assert not np.array_equal(env_logits, fast_logits) or not all(
        np.array_equal(env_grads[k], fast_grads[k]) for k in fast_grads)  # two different code paths ran
    assert fast.use_fast(probe)


def test_stride_kernel_flag_changes_no_value():
    paddle.seed(4)
    model = MMNasNet(load_config("tiny").model, token_size=40, answer_size=17)
    model.eval()
    feats, boxes, ids = _inputs(np.random.default_rng(1))
    before = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    out = {}
    try:
        for flag in (True, False):
            paddle.set_flags({"FLAGS_use_stride_kernel": flag})
            out[flag] = model(_t(feats), None, _t(boxes), paddle.to_tensor(ids)).numpy()
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": before})
    np.testing.assert_array_equal(out[True], out[False])


# ---- runtime settings (in a fresh interpreter: they act at import) --------------------------------

def _configure_in_subprocess(env_extra, code="import json; from mmnas import runtime; "
                                              "a = runtime.configure(); b = runtime.configure(); "
                                              "import os; print(json.dumps([a, b, dict(os.environ)]))"):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM", "MKL_DEBUG_CPU_TYPE",
                        "FLAGS_use_stride_kernel", "MMNAS_RUNTIME_SET")}
    env.update(env_extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_uses_the_machine_and_is_idempotent():
    from mmnas import runtime
    first, second, env = _configure_in_subprocess({})
    assert first["threads"] == second["threads"] == runtime.usable_cpus()
    assert env["MKL_NUM_THREADS"] == str(first["threads"])
    assert "OMP_NUM_THREADS" not in env  # exported, it makes Paddle print a warning at import (runtime docstring)
    assert env["FLAGS_use_stride_kernel"] == "0"
    assert second["user_set"] == []  # its own settings are not mistaken for the user's
    if runtime.cpu_vendor() == "AuthenticAMD":
        assert env["MKL_DEBUG_CPU_TYPE"] == "5"


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM"])
def test_configure_honours_the_users_thread_variables(var):
    first, _, env = _configure_in_subprocess({var: "1", "MKL_DEBUG_CPU_TYPE": "4", "FLAGS_use_stride_kernel": "1"})
    assert first["threads"] == 1
    assert env[var] == "1" and env["MKL_DEBUG_CPU_TYPE"] == "4" and env["FLAGS_use_stride_kernel"] == "1"


def test_configure_after_paddle_import_sets_flags():
    code = ("import json, paddle; from mmnas import runtime; s = runtime.configure(processes=2); "
            "print(json.dumps([s, paddle.get_flags(['FLAGS_use_stride_kernel']), 0]))")
    state, flags, _ = _configure_in_subprocess({}, code)
    assert flags["FLAGS_use_stride_kernel"] is False
    assert state["threads"] == max(1, state["cpus"] // 2)


def test_amp_is_off_by_default_and_on_cpu():
    from types import SimpleNamespace
    from mmnas import runtime
    off = SimpleNamespace(train=SimpleNamespace())
    assert not runtime.amp_enabled(off) and runtime.make_grad_scaler(off) is None
    with runtime.amp_context(off):
        pass
    with pytest.raises(ValueError):
        runtime.amp_enabled(SimpleNamespace(train=SimpleNamespace(amp="fp8")))
    if not paddle.device.get_device().startswith("gpu"):
        assert not runtime.amp_enabled(SimpleNamespace(train=SimpleNamespace(amp="bf16")))


# ---- FLOP counting ---------------------------------------------------------------------------

def test_flop_count_of_a_one_block_model_by_hand():
    from bench.common import forward_flops, sample_flops
    cfg = load_config("tiny").model
    cfg.enc, cfg.dec = ["FFN"], ["SA"]
    H, E, T, n, A = cfg.hidden_size, cfg.word_embed, 14, 10, 5
    lstm = T * 2 * (E * 4 * H + H * 4 * H)
    enc = T * 2 * (H * 4 * H) * 2
    dec = n * 2 * H * H * 4 + 2 * 2 * n * n * H
    flat = sum(p * 2 * H * cfg.flat_mlp + p * 2 * cfg.flat_mlp + 2 * p * H + 2 * H * cfg.flat_out for p in (T, n))
    proj = 2 * cfg.flat_out * A
    f = forward_flops(cfg, n, answer_size=A)
    assert f["other"] == lstm + enc + dec + flat + proj
    assert f["adapter"] == n * 2 * 2048 * H and f["rel"] == n * n * 2 * 4 * cfg.rel_size
    assert sample_flops(cfg, n, train=True, answer_size=A) == pytest.approx(
        3 * f["other"] + 2 * (f["adapter"] + f["rel"]))


# ---- packed feature store ------------------------------------------------------------------------

def _write_feature_folder(folder, counts, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id, n in counts.items():
        xy = rng.uniform(0, 300, (n, 2))
        np.savez(os.path.join(folder, f"COCO_train2014_{image_id:012d}.jpg.npz"),
                 x=(rng.random((2048, n)) * 8).astype("float32"),
                 bbox=np.concatenate([xy, xy + rng.uniform(1, 100, (n, 2))], 1).astype("float32"),
                 image_h=np.int64(480), image_w=np.int64(640), num_bbox=np.int64(n))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_packed_store_gives_the_npz_items(tmp_path, dtype):
    from mmnas.data.features import load_npz
    from mmnas.data.packed import PackedFeatures, float16_to_float32
    from tools.pack_feats import pack_folder
    folder = str(tmp_path / "train2014")
    _write_feature_folder(folder, {1: 3, 2: 10, 7: 1})
    summary = pack_folder(folder, dtype=dtype, progress=False)
    assert summary["images"] == 3 and summary["regions"] == 14
    store = PackedFeatures(folder + ".packed")
    for i, name in enumerate(store.names):
        feats, boxes = load_npz(os.path.join(folder, name))
        got_feats, got_boxes = store.get(i)
        assert got_feats.dtype == np.float32 and got_feats.shape == feats.shape
        expected = feats if dtype == "float32" else feats.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got_feats, expected)
        np.testing.assert_array_equal(got_boxes, boxes)
    assert store.stale_entries(folder) == []
    h = np.array([0, -0.0, 1e-7, 65504, -2.5, np.inf, 3.14159], dtype=np.float16)
    np.testing.assert_array_equal(float16_to_float32(h), h.astype(np.float32))


def test_pack_refuses_values_outside_float16(tmp_path):
    from tools.pack_feats import pack_folder
    folder = str(tmp_path / "train2014")
    os.makedirs(folder)
    x = np.ones((2048, 2), "float32"); x[5, 1] = 1e6
    np.savez(os.path.join(folder, "COCO_train2014_000000000001.jpg.npz"), x=x,
             bbox=np.array([[0, 0, 5, 5], [1, 1, 6, 6]], "float32"))
    with pytest.raises(ValueError, match="float16"):
        pack_folder(folder, dtype="float16", progress=False)
    assert not os.path.exists(os.path.join(folder + ".packed", "feats.bin"))


def test_dataset_reads_the_packed_store_transparently(tmp_path):
    from tests.test_data import FEAT_FOLDERS, make_root, tiny_vocab
    from mmnas.data.dataset import VQADataset
    from tools.pack_feats import pack_folder
    root = make_root(tmp_path)
    vocab = tiny_vocab(root)
    plain = VQADataset(root, "train+val", vocab, progress=False)
    expected = [plain[i] for i in range(len(plain))]
    counts = plain.box_counts.copy()
    pack_folder(os.path.join(root, "vqa", "feats", "train2014"), dtype="float32", progress=False)
    for preload in (False, True):
        ds = VQADataset(root, "train+val", vocab, preload=preload, progress=False)
        # train images from the store, val images (not packed) still from their .npz
        assert ds.packed_images == len(FEAT_FOLDERS["train2014"])
        np.testing.assert_array_equal(ds.box_counts, counts)
        for i, item in enumerate(expected):
            for got, want in zip(ds[i], item):
                np.testing.assert_array_equal(got, want)
    off = VQADataset(root, "train+val", vocab, progress=False, packed_feats="off")
    assert off.packed_images == 0


def test_packed_float16_preload_holds_half_the_memory(tmp_path):
    from tests.test_data import make_root, tiny_vocab
    from mmnas.data.dataset import VQADataset
    from tools.pack_feats import pack_folder
    root = make_root(tmp_path)
    vocab = tiny_vocab(root)
    npz = VQADataset(root, "train", vocab, preload=True, progress=False, packed_feats="off")
    pack_folder(os.path.join(root, "vqa", "feats", "train2014"), dtype="float16", progress=False)
    packed = VQADataset(root, "train", vocab, preload=True, progress=False)
    assert packed.packed_images == packed.num_images
    assert packed.preloaded_bytes <= 0.5 * npz.preloaded_bytes + 16 * 64  # boxes stay float32
    for i in range(len(npz)):
        np.testing.assert_allclose(packed[i][0], npz[i][0], rtol=2 ** -11, atol=0)


def test_dataset_warns_when_the_folder_changed_after_packing(tmp_path):
    from tests.test_data import make_root, tiny_vocab
    from mmnas.data.dataset import VQADataset
    from tools.pack_feats import pack_folder
    root = make_root(tmp_path)
    folder = os.path.join(root, "vqa", "feats", "train2014")
    pack_folder(folder, dtype="float32", progress=False)
    index = os.path.join(folder + ".packed", "index.npz")
    os.utime(index, ns=(1, 1))  # the store predates the folder's last change
    with pytest.warns(UserWarning, match="pack_feats"):
        VQADataset(root, "train", tiny_vocab(root), progress=False)


# ---- gradient clipping -------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_paddle(max_norm):
    from mmnas import runtime
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype("float32") for s in ((64, 32), (32,), (7, 3, 5))]
    out = []
    for fn in (runtime.clip_grad_norm_, paddle.nn.utils.clip_grad_norm_):
        params = []
        for g in grads:
            p = paddle.create_parameter(list(g.shape), "float32")
            (p * _t(g)).sum().backward()
            params.append(p)
        params.append(paddle.create_parameter([3], "float32"))  # no gradient: skipped
        norm = fn(params, max_norm)
        out.append((float(norm), [p.grad.numpy() for p in params[:-1]]))
    (n1, g1), (n2, g2) = out
    assert n1 == pytest.approx(n2, rel=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
