"""Converting a MILVLG/mmnas visual grounding checkpoint (full_vgd.py Net_Full): a PyTorch VGD
network with the reference's parameter names and random weights (tests/reference/torch_vgd.py),
its state dict converted (mmnas/models/grounding_convert.py) into the Paddle GroundingNet, gives
the same region scores and boxes to 1e-4."""
import os
import sys

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")

from mmnas.checkpoint_files import CheckpointError, match_state_dict, safe_load  # noqa: E402
from mmnas.config import ModelConfig  # noqa: E402
from mmnas.metrics.grounding import pick_boxes  # noqa: E402
from mmnas.models.grounding_convert import (check_genotype, convert_vgd_checkpoint, vgd_key,  # noqa: E402
                                            vgd_torch_to_paddle)
from mmnas.models.grounding_head import GroundingNet  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from torch_vgd import TorchVGDNet  # noqa: E402

VGD_ENC = "SA FFN FFN SA FFN FFN FFN FFN FFN FFN FFN SA".split()
VGD_DEC = "GA GA GA GA GA GA FFN GA RSA RSA GA FFN RSA GA GA RSA GA RSA".split()
T = 40


def small_cfg():
    return ModelConfig(hidden_size=64, heads=4, rel_head_width=16, rel_size=16, flat_mlp=32, glimpses=1,
                       flat_out=128, word_embed=24, feat_size=48, dropout=0.1, enc=VGD_ENC, dec=VGD_DEC)


@pytest.fixture(scope="module")
def reference():
    cfg = small_cfg()
    torch.manual_seed(0)
    net = TorchVGDNet(cfg, T).eval()
    with torch.no_grad():  # LayerNorm gains and shifts away from 1 / 0, so their mapping matters
        for name, p in net.named_parameters():
            if name.endswith(("a_2", "b_2")):
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("a_2") else 0.3 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    B, N = 3, 10
    feats = rng.normal(size=(B, N, cfg.feat_size)).astype(np.float32)
    xy = rng.uniform(0, 300, size=(B, N, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 200, size=(B, N, 2))], -1).astype(np.float32)
    ids = rng.integers(3, T, size=(B, 15))
    ids[:, 14] = 0
    ids[0, 5:] = 0
    ids[1, 9:] = 0
    with torch.no_grad():
        log_scores, deltas = net(torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(ids))
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return cfg, net, state, (feats, boxes, ids), log_scores.numpy(), deltas.numpy()


def paddle_outputs(model, feats, boxes, ids):
    with paddle.no_grad():
        log_scores, deltas = model(paddle.to_tensor(feats), paddle.to_tensor(boxes), paddle.to_tensor(ids))
    return log_scores.numpy(), deltas.numpy()


def converted_model(cfg, state):
    paddle.seed(5)
    model = GroundingNet(cfg, T)
    model.set_state_dict(match_state_dict(model, vgd_torch_to_paddle(state)))
    model.eval()
    return model


def test_reference_names_are_the_checkpoints(reference):
    _, _, state, *_ = reference
    assert "imgfeat_linear.weight" in state and "linear_y_rel.bias" in state and "attfc_y.weight" in state
    assert "backnone.cells_enc.0.dag.0.0.mhatt.linear_q.weight" in state
    assert "backnone.cells_enc.0.dag.0.0.mhatt.linear_q.bias" not in state  # bias-free
    assert "backnone.cells_dec.0.dag.8.0.mhatt.linear_r.bias" in state
    assert "backnone.cells_enc.0.dag.1.0.mlp.fc.linear.weight" in state and "attflat_x.linear_merge.bias" in state
    assert vgd_key("backnone.cells_dec.0.dag.8.0.ln.a_2") == "backbone.dec_list.8.norm.a_2"
    assert vgd_key("attflat_x.mlp.fc.linear.weight") == "head.attflat_lang.mlp.fc.linear.weight"
    assert vgd_key("attfc_y.bias", head_prefix="") == "attfc_img.bias"


def test_scores_and_boxes_match_pytorch(reference):
    cfg, _, state, (feats, boxes, ids), log_scores, deltas = reference
    model = converted_model(cfg, state)
    out_scores, out_deltas = paddle_outputs(model, feats, boxes, ids)
    np.testing.assert_allclose(out_scores, log_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out_deltas, deltas, atol=1e-4, rtol=0)
    sizes = np.array([[600, 500]] * 3)
    regions, picked = pick_boxes(out_scores, out_deltas, boxes, sizes)
    ref_regions, ref_picked = pick_boxes(log_scores, deltas, boxes, sizes)
    np.testing.assert_array_equal(regions, ref_regions)
    np.testing.assert_allclose(picked, ref_picked, atol=1e-3)
    # the loaded weights matter: the same net with its own random weights disagrees
    paddle.seed(5)
    fresh = GroundingNet(cfg, T)
    fresh.eval()
    assert np.abs(paddle_outputs(fresh, feats, boxes, ids)[1] - deltas).max() > 1e-2
    # the zero biases stand in for the reference's bias-free projections
    converted = vgd_torch_to_paddle(state)
    assert np.abs(converted["backbone.dec_list.0.mhatt.linear_k.bias"]).max() == 0.0
    np.testing.assert_array_equal(converted["adapter.frcn_linear.weight"], state["imgfeat_linear.weight"].T)


def test_genotype_check(reference):
    _, _, state, *_ = reference
    check_genotype(state, VGD_ENC, VGD_DEC)
    check_genotype(state, VGD_ENC, ["SA" if op == "GA" else op for op in VGD_DEC])  # SA and GA look alike
    with pytest.raises(CheckpointError, match="decoder nodes are ATT ATT .* model.dec is"):
        check_genotype(state, VGD_ENC, VGD_DEC[::-1])


def test_what_does_not_convert():
    with pytest.raises(CheckpointError, match="BBOX_FEATURE=True"):
        vgd_key("bboxfeat_linear.weight")
    with pytest.raises(CheckpointError, match="only one encoder cell"):
        vgd_key("backnone.cells_enc.1.dag.0.0.ln.a_2")
    with pytest.raises(CheckpointError, match="is not a parameter of the MMnas VGD network"):
        vgd_key("proj.weight")


def test_convert_file(reference, tmp_path):
    cfg, _, state, (feats, boxes, ids), log_scores, deltas = reference
    src, out = str(tmp_path / "vgd.pkl"), str(tmp_path / "vgd.pdparams")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "epoch": 13}, src)
    paddle.seed(5)
    model = GroundingNet(cfg, T)
    summary = convert_vgd_checkpoint(src, out, VGD_ENC, VGD_DEC, model=model)
    assert summary["token_size"] == T
    model.set_state_dict(match_state_dict(model, safe_load(out)))
    model.eval()
    np.testing.assert_allclose(paddle_outputs(model, feats, boxes, ids)[0], log_scores, atol=1e-4, rtol=0)


def test_convert_tool_writes_what_the_grounding_model_loads(reference, tmp_path):
    """tools/convert_mmnas_ckpt.py, given the config the checkpoint was trained with, writes weights
    whose scores are the reference's; a VQA config is refused by name."""
    import subprocess
    cfg, _, state, (feats, boxes, ids), log_scores, _ = reference
    src, out = str(tmp_path / "vgd.pkl"), str(tmp_path / "vgd.pdparams")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    yml = tmp_path / "vgd48.yml"
    yml.write_text(f"base: {os.path.join(repo, 'configs', 'vgd', 'mmnasnet_tiny.yml')}\n"
                   f"model:\n  flat_mlp: 32\n  word_embed: 24\n  feat_size: 48\n"
                   f"  genotype: {{enc: [{', '.join(VGD_ENC)}], dec: [{', '.join(VGD_DEC)}]}}\n")
    tool = os.path.join(repo, "tools", "convert_mmnas_ckpt.py")
    done = subprocess.run([sys.executable, tool, src, out, f"--MODEL={yml}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "converted" in done.stdout and "(grounding)" in done.stdout and "token size:  40" in done.stdout
    model = GroundingNet(cfg, T)
    model.set_state_dict(match_state_dict(model, safe_load(out)))
    model.eval()
    np.testing.assert_allclose(paddle_outputs(model, feats, boxes, ids)[0], log_scores, atol=1e-4, rtol=0)
    refused = subprocess.run([sys.executable, tool, src, str(tmp_path / "x.pdparams"), "--MODEL=tiny"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.startswith("error: --MODEL tiny is a config of the answer task") \
        and "tools/convert_openvqa_ckpt.py" in refused.stderr
