"""A MILVLG/mmnas ITM checkpoint (the reference's full_itm.py names, bias-free attention) converts
to MatchingNet with the same scores: PyTorch network from the spec (tests/reference/torch_itm.py)
with random weights, converted, scores within 1e-4."""
import os
import sys

import numpy as np
import paddle
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))

torch = pytest.importorskip("torch")

from mmnas.checkpoint_files import CheckpointError  # noqa: E402
from mmnas.config import ModelConfig  # noqa: E402
from mmnas.models.matching_convert import convert_itm_checkpoint, itm_key, itm_state_to_paddle  # noqa: E402
from mmnas.models.matching_head import MatchingNet  # noqa: E402
from torch_itm import ReferenceITM  # noqa: E402

ENC = ["SA", "FFN", "SA", "FFN"]
DEC = ["SA", "GA", "RSA", "FFN", "GA", "RSA"]
TOKENS = 40


def config():
    # head width 64 as the reference (heads = d / 64); small widths to stay fast
    return ModelConfig(hidden_size=128, heads=2, rel_head_width=64, rel_size=16, flat_mlp=32, flat_out=96,
                       word_embed=24, feat_size=48, max_token=50, max_regions=36, enc=ENC, dec=DEC)


def reference_net(seed=0):
    torch.manual_seed(seed)
    net = ReferenceITM(TOKENS, ENC, DEC, d=128, word_embed=24, feat_size=48, rel_size=16, flat_mlp=32, flat_out=96)
    return net.eval()


def inputs(seed=0, b=3, n=36, t=50):
    rng = np.random.default_rng(seed)
    feats = rng.normal(0, 1, (b, n, 48)).astype("float32")
    x1 = rng.uniform(0, 300, (b, n, 1)); y1 = rng.uniform(0, 300, (b, n, 1))
    boxes = np.concatenate([x1, y1, x1 + rng.uniform(10, 200, (b, n, 1)), y1 + rng.uniform(10, 200, (b, n, 1))],
                           -1).astype("float32")
    ids = np.zeros((b, t), "int64")
    for i, length in enumerate((12, 7, 20)[:b]):
        ids[i, :length] = rng.integers(3, TOKENS, length)
    feats[1, 30:] = 0  # padded regions in one sample
    boxes[1, 30:] = 0
    return feats, boxes, ids


def torch_state(net):
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def test_reference_names_map_onto_matching_net():
    net = reference_net()
    state = itm_state_to_paddle(torch_state(net))
    own = MatchingNet(config(), TOKENS).state_dict()
    assert set(state) == set(own)
    assert itm_key("backnone.cells_dec.0.dag.5.0.mhatt.linear_r.weight") == "backbone.dec_list.5.mhatt.linear_r.weight"
    assert itm_key("backnone.cells_enc.0.dag.1.0.ln.a_2") == "backbone.enc_list.1.norm.a_2"
    assert itm_key("attflat_x.linear_merge.bias") == "head.attflat_lang.linear_merge.bias"
    assert itm_key("imgfeat_linear.weight") == "adapter.frcn_linear.weight"
    assert not state["backbone.enc_list.0.mhatt.linear_q.bias"].any()  # bias-free in the reference


def test_converted_scores_match_pytorch(tmp_path):
    net = reference_net(1)
    feats, boxes, ids = inputs(2)
    with torch.no_grad():
        probs, logits = net(torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(ids))
    path = str(tmp_path / "itm.pkl")
    torch.save(net.state_dict(), path)
    out = str(tmp_path / "itm.pdparams")
    summary = convert_itm_checkpoint(path, out, config())
    assert summary["token_size"] == TOKENS
    ours = MatchingNet(config(), TOKENS)
    ours.set_state_dict(paddle.load(out))
    ours.eval()
    with paddle.no_grad():
        our_logits = ours(paddle.to_tensor(feats), paddle.to_tensor(boxes), paddle.to_tensor(ids))
    np.testing.assert_allclose(paddle.nn.functional.sigmoid(our_logits).numpy(), probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(our_logits.numpy(), logits.numpy(), atol=1e-4)
    assert np.std(logits.numpy()) > 1e-3  # the samples differ: the comparison is not of constants


def test_wrong_genotype_is_refused_by_key(tmp_path):
    net = reference_net()
    path = str(tmp_path / "itm.pkl")
    torch.save(net.state_dict(), path)
    cfg = config()
    cfg.dec = ["SA", "GA", "SA", "FFN", "GA", "RSA"]  # position 2 is RSA in the checkpoint
    with pytest.raises(CheckpointError, match=r"backbone.dec_list.2.mhatt.linear_r"):
        convert_itm_checkpoint(path, str(tmp_path / "out.pdparams"), cfg)


def test_foreign_keys_refused():
    with pytest.raises(CheckpointError, match="BBOX_FEATURE=True"):
        itm_key("bboxfeat_linear.weight")
    with pytest.raises(CheckpointError, match="more than one cell"):
        itm_key("backnone.cells_enc.1.dag.0.0.ln.a_2")
    with pytest.raises(CheckpointError, match="not a parameter of the reference's ITM network"):
        itm_key("classifier.weight")
