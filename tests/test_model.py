"""MMNasNet in Paddle: golden logits, operator semantics pinned by hand, masks, gradients,
the released key layout, and the safe checkpoint loader."""
import json
import os
import pickle

import numpy as np
import paddle
import pytest

from mmnas.config import ModelConfig, load_config
from mmnas.checkpoint_files import CheckpointError, load_weights, match_state_dict, safe_load
from mmnas.models import MMNasNet
from mmnas.ops import FFN, GA, RSA, SA, BoxRelations, LayerNorm, box_relation_geometry, make_mask, make_token_mask


def tiny_cfg(**overrides):
    cfg = load_config("tiny").model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def random_batch(rng, b=3, n=12, t=14, vocab=50, pad_regions=(0, 3, 5), pad_tokens=(0, 4, 9)):
    """Inputs of real form: each sample has some zero (padding) regions and PAD tokens."""
    feats = rng.uniform(0, 2, (b, n, 2048)).astype("float32")
    x1 = rng.uniform(0, 400, (b, n, 1)); y1 = rng.uniform(0, 300, (b, n, 1))
    boxes = np.concatenate([x1, y1, x1 + rng.uniform(5, 200, (b, n, 1)),
                            y1 + rng.uniform(5, 150, (b, n, 1))], -1).astype("float32")
    ids = rng.integers(1, vocab, (b, t)).astype("int64")
    for i in range(b):
        if pad_regions[i % len(pad_regions)]:
            feats[i, -pad_regions[i % len(pad_regions)]:] = 0
            boxes[i, -pad_regions[i % len(pad_regions)]:] = 0
        if pad_tokens[i % len(pad_tokens)]:
            ids[i, -pad_tokens[i % len(pad_tokens)]:] = 0
    return feats, boxes, ids


def run(model, feats, boxes, ids):
    return model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(ids)).numpy()


# ---- golden reference -------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["published", "mcan"])
def test_golden_logits(golden_dir, arch):
    g = json.load(open(os.path.join(golden_dir, "model_tiny_config.json")))
    data = np.load(os.path.join(golden_dir, f"model_tiny_{arch}.npz"))
    cfg = ModelConfig(hidden_size=g["hidden_size"], heads=g["heads"], rel_head_width=g["rel_head_width"],
                      rel_size=g["rel_size"], flat_mlp=g["flat_mlp"], glimpses=g["glimpses"],
                      flat_out=g["flat_out"], word_embed=g["word_embed"],
                      enc=g[arch]["enc"], dec=g[arch]["dec"])
    model = MMNasNet(cfg, g["token_size"], g["answer_size"])
    state = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    model.set_state_dict(match_state_dict(model, state))
    model.eval()
    logits = run(model, data["region_feats"], data["boxes"], data["question_ids"])
    np.testing.assert_allclose(logits, data["logits"], atol=1e-5, rtol=0)


# ---- operator semantics pinned by hand ---------------------------------------------------

def test_layer_norm_matches_hand_computation():
    x = np.array([[1.0, 2.0, 4.0, 9.0]], dtype="float32")
    mean = 4.0
    # unbiased std: sqrt(((-3)^2 + (-2)^2 + 0^2 + 5^2) / 3) = sqrt(38 / 3)
    std = np.sqrt(38.0 / 3.0)
    expected = (x - mean) / (std + 1e-6)
    ln = LayerNorm(4)
    np.testing.assert_allclose(ln(paddle.to_tensor(x)).numpy(), expected, rtol=1e-6, atol=1e-6)
    # and it is not paddle.nn.LayerNorm (biased variance, eps inside the sqrt)
    other = paddle.nn.LayerNorm(4)(paddle.to_tensor(x)).numpy()
    assert np.abs(other - expected).max() > 1e-2
    # a_2 / b_2 scale and shift
    ln.a_2.set_value(np.full([4], 2.0, "float32")); ln.b_2.set_value(np.full([4], 0.5, "float32"))
    np.testing.assert_allclose(ln(paddle.to_tensor(x)).numpy(), 2 * expected + 0.5, rtol=1e-6, atol=1e-6)


def test_relation_geometry_three_boxes_by_hand():
    # box 0: x 0..9, y 0..19 -> cx 4.5, cy 9.5, w 10, h 20
    # box 1: x 10..29, y 0..9 -> cx 19.5, cy 4.5, w 20, h 10
    # box 2: same centre as box 0, w 5, h 5 -> x 2..6, y 7..11 (cx 4, cy 9)
    boxes = np.array([[[0, 0, 9, 19], [10, 0, 29, 9], [2, 7, 6, 11]]], dtype="float32")
    rel = box_relation_geometry(paddle.to_tensor(boxes)).numpy()[0]
    assert rel.shape == (3, 3, 4)
    # (0, 1): |4.5 - 19.5| / 10 = 1.5; |9.5 - 4.5| / 20 = 0.25; w 10/20; h 20/10
    np.testing.assert_allclose(rel[0, 1], np.log([1.5, 0.25, 0.5, 2.0]), rtol=1e-6)
    # (1, 0): divided by box 1's own size: 15/20, 5/10; w 20/10; h 10/20
    np.testing.assert_allclose(rel[1, 0], np.log([0.75, 0.5, 2.0, 0.5]), rtol=1e-6)
    # (0, 2): |4.5 - 4| / 10 = 0.05; |9.5 - 9| / 20 = 0.025; w 10/5; h 20/5
    np.testing.assert_allclose(rel[0, 2], np.log([0.05, 0.025, 2.0, 4.0]), rtol=1e-6)
    # (i, i): centre distance 0 is clamped to 1e-3
    np.testing.assert_allclose(rel[2, 2], [np.log(1e-3), np.log(1e-3), 0, 0], rtol=1e-6, atol=1e-7)


def test_masks_mark_zero_rows_and_pad_tokens():
    feats = np.ones([2, 4, 3], "float32"); feats[0, 2:] = 0; feats[1, 1, 0] = -1  # -1: not padding
    mask = make_mask(paddle.to_tensor(feats)).numpy()
    assert mask.shape == (2, 1, 1, 4)
    assert mask[0, 0, 0].tolist() == [False, False, True, True]
    assert not mask[1].any()
    tokens = make_token_mask(paddle.to_tensor(np.array([[5, 3, 0, 0]], "int64"))).numpy()
    assert tokens[0, 0, 0].tolist() == [False, False, True, True]


def test_rsa_adds_log_clamped_relation_to_scores():
    """RSA with value = identity-ish check: compare against a numpy re-computation of one head."""
    paddle.seed(0)
    cfg = tiny_cfg(dropout=0.0)
    block = RSA(cfg)
    block.eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, cfg.hidden_size)).astype("float32")
    rel = np.abs(rng.normal(size=(1, 5, 5, cfg.rel_size))).astype("float32")
    mask = np.zeros([1, 1, 1, 5], bool); mask[..., 4] = True
    out = block(paddle.to_tensor(x), None, paddle.to_tensor(mask), None,
                BoxRelations.of_embedding(paddle.to_tensor(rel))).numpy()

    att = block.mhatt
    W = {n: getattr(att, n).weight.numpy() for n in ["linear_q", "linear_k", "linear_v", "linear_merge", "linear_r"]}
    B = {n: getattr(att, n).bias.numpy() for n in W}
    heads, width = att.heads, att.head_width
    q = (x[0] @ W["linear_q"] + B["linear_q"]).reshape(5, heads, width).transpose(1, 0, 2)
    k = (x[0] @ W["linear_k"] + B["linear_k"]).reshape(5, heads, width).transpose(1, 0, 2)
    v = (x[0] @ W["linear_v"] + B["linear_v"]).reshape(5, heads, width).transpose(1, 0, 2)
    r = np.maximum(rel[0] @ W["linear_r"] + B["linear_r"], 0).transpose(2, 0, 1)  # [h, N, N]
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(width) + np.log(np.maximum(r, 1e-6))
    scores[..., 4] = -1e9
    p = np.exp(scores - scores.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    merged = (p @ v).transpose(1, 0, 2).reshape(5, heads * width) @ W["linear_merge"] + B["linear_merge"]
    y = x[0] + merged
    mu = y.mean(-1, keepdims=True); sd = y.std(-1, ddof=1, keepdims=True)
    expected = block.norm.a_2.numpy() * (y - mu) / (sd + 1e-6) + block.norm.b_2.numpy()
    np.testing.assert_allclose(out[0], expected, atol=2e-5)


@pytest.mark.parametrize("op", [SA, GA, RSA, FFN])
def test_block_output_shapes(op):
    cfg = tiny_cfg()
    block = op(cfg)
    x = paddle.randn([2, 7, cfg.hidden_size]); y = paddle.randn([2, 14, cfg.hidden_size])
    x_mask = paddle.zeros([2, 1, 1, 7], "bool"); y_mask = paddle.zeros([2, 1, 1, 14], "bool")
    rel = BoxRelations.of_embedding(paddle.randn([2, 7, 7, cfg.rel_size]))
    assert block(x, y, x_mask, y_mask, rel).shape == [2, 7, cfg.hidden_size]


def test_network_output_shape_for_any_region_count():
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=17)
    model.eval()
    rng = np.random.default_rng(1)
    for n in (1, 10, 37, 100):
        feats, boxes, ids = random_batch(rng, b=2, n=n, pad_regions=(0,))
        assert run(model, feats, boxes, ids).shape == (2, 17)


# ---- masks: padding does not change the answer -------------------------------------------

def test_padding_regions_and_tokens_do_not_change_logits():
    paddle.seed(3)
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=11)
    model.eval()
    rng = np.random.default_rng(3)
    feats, boxes, ids = random_batch(rng, b=3, n=12)
    base = run(model, feats, boxes, ids)
    # 8 more zero regions (features and boxes) at the end of every sample
    feats_p = np.concatenate([feats, np.zeros([3, 8, 2048], "float32")], 1)
    boxes_p = np.concatenate([boxes, np.zeros([3, 8, 4], "float32")], 1)
    np.testing.assert_allclose(run(model, feats_p, boxes_p, ids), base, atol=1e-5, rtol=0)
    # each sample alone, cut to its own real regions, gives the same logits as in the batch
    for i, n_pad in enumerate((0, 3, 5)):
        n = 12 - n_pad
        alone = run(model, feats[i:i + 1, :n], boxes[i:i + 1, :n], ids[i:i + 1])
        np.testing.assert_allclose(alone, base[i:i + 1], atol=1e-5, rtol=0)
    # changing what sits in PAD token positions' *features* is impossible (ids are 0), but the
    # padded regions' boxes are ignored: random boxes under zero features change nothing
    boxes_r = boxes_p.copy(); boxes_r[:, 12:] = rng.uniform(0, 300, (3, 8, 4))
    np.testing.assert_allclose(run(model, feats_p, boxes_r, ids), base, atol=1e-5, rtol=0)


def test_mask_is_what_makes_padding_harmless():
    """A control: without the mask the same padding does change the logits, so the padding
    test above can fail."""
    paddle.seed(4)
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=11)
    model.eval()
    rng = np.random.default_rng(4)
    feats, boxes, ids = random_batch(rng, b=2, n=10, pad_regions=(0,))
    feats_p = np.concatenate([feats, np.zeros([2, 6, 2048], "float32")], 1)
    boxes_p = np.concatenate([boxes, np.zeros([2, 6, 4], "float32")], 1)
    import mmnas.models.mmnasnet as net
    original = net.make_mask
    net.make_mask = lambda f: paddle.zeros([f.shape[0], 1, 1, f.shape[1]], "bool")
    try:
        assert np.abs(run(model, feats_p, boxes_p, ids) - run(model, feats, boxes, ids)).max() > 1e-4
    finally:
        net.make_mask = original


# ---- training signal ---------------------------------------------------------------------

def test_gradients_reach_every_parameter():
    paddle.seed(5)
    # a genotype with every op, so every op type's parameters are checked
    model = MMNasNet(tiny_cfg(enc=["SA", "FFN"], dec=["SA", "GA", "RSA", "FFN"]), token_size=50, answer_size=9)
    model.train()
    feats, boxes, ids = random_batch(np.random.default_rng(5), b=3, n=9)
    logits = model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(ids))
    paddle.nn.functional.binary_cross_entropy_with_logits(
        logits, paddle.rand(logits.shape), reduction="sum").backward()
    # a key bias adds the same amount to all scores of a query, and the AttFlat scorer's last bias
    # (one glimpse) the same to every position: softmax cancels both, so their exact gradient is
    # 0 and what they get is rounding noise (or nothing); they must still be connected
    shift_only = ("linear_k.bias", "attflat_img.mlp.linear.bias", "attflat_lang.mlp.linear.bias")
    no_grad = [name for name, p in model.named_parameters()
               if p.grad is None or (float(paddle.abs(p.grad).sum()) == 0.0 and not name.endswith(shift_only))]
    assert not no_grad, f"parameters without gradient: {no_grad}"


# ---- the released layout ------------------------------------------------------------------

def read_key_list(path, token_size, answer_size):
    shapes = {}
    for line in open(path):
        name, shape = line.strip().split(" ", 1)
        dims = [token_size if d == "T" else answer_size if d == "A" else int(d)
                for d in shape.strip("[]").split(", ")]
        shapes[name] = dims
    return shapes


@pytest.mark.parametrize("size", ["small", "large"])
def test_released_key_list_loads_without_renaming(spec_dir, size):
    T, A = 23, 31
    shapes = read_key_list(os.path.join(spec_dir, f"state_dict_{size}.txt"), T, A)
    model = MMNasNet(load_config(size).model, token_size=T, answer_size=A)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == shapes
    if size == "small":  # a full load through the safe loader, as a user's file would go
        rng = np.random.default_rng(0)
        state = {k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}
        for gate in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):  # one tensor, two names
            state[f"lstm.0.cell.{gate}"] = state[f"lstm.{gate}_l0"]
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"keys_{os.getpid()}.pdparams")
        paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, path)
        try:
            load_weights(model, path)
        finally:
            os.remove(path)
        np.testing.assert_array_equal(model.proj.weight.numpy(), state["proj.weight"])
        np.testing.assert_array_equal(model.lstm.weight_ih_l0.numpy(), state["lstm.weight_ih_l0"])
        state["lstm.0.cell.bias_hh"] = state["lstm.0.cell.bias_hh"] + 1  # aliases disagree
        with pytest.raises(CheckpointError, match="name the same tensor"):
            match_state_dict(model, state)


# ---- the safe loader -----------------------------------------------------------------------

class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loader_refuses_a_pickle_that_runs_a_command(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pdparams"
    with open(evil, "wb") as f:
        pickle.dump({"proj.weight": _RunsACommand(str(marker))}, f)
    # the crafted file really would run the command with plain pickle (in a subprocess-free way
    # we only check that its payload names os.system) ...
    assert b"system" in evil.read_bytes()
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=9)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_weights(model, str(evil))
    with pytest.raises(CheckpointError, match="posix.system|os.system|nt.system"):
        safe_load(str(evil))
    assert not marker.exists()


def test_loader_accepts_wrapped_and_prefixed_state_dicts(tmp_path):
    paddle.seed(6)
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=9)
    state = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith("lstm.0.")}
    for name, obj in [("flat.pdparams", state),
                      ("wrapped.pkl", {"state_dict": state, "epoch": 3}),
                      ("dp.pdparams", {f"_layers.{k}": v for k, v in state.items()}),
                      ("torchdp.pkl", {"state_dict": {f"module.{k}": v for k, v in state.items()}})]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f, protocol=2 if name.endswith(".pkl") else 4)
        fresh = MMNasNet(tiny_cfg(), token_size=50, answer_size=9)
        load_weights(fresh, str(tmp_path / name))
        for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name}: {k}")


def test_loader_reports_every_mismatch_by_name(tmp_path):
    model = MMNasNet(tiny_cfg(), token_size=50, answer_size=9)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["proj.bias"]
    state["extra.weight"] = np.zeros([2], "float32")
    state["embedding.weight"] = np.zeros([60, 300], "float32")
    path = tmp_path / "bad.pdparams"
    with open(path, "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, str(path))
    msg = str(err.value)
    assert "proj.bias" in msg and "extra.weight" in msg
    assert "embedding.weight: model expects [50, 300], file has [60, 300]" in msg
    assert "question vocabulary" in msg
