"""The ITM configs and the published ITM genotype (spec 0.2) load and build a MatchingNet."""
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas.config import CONFIG_DIR, load_config, read_genotype  # noqa: E402
from mmnas.models.matching_head import MatchingNet  # noqa: E402

# spec 0.2, arch/mmnas_itm.json: encoder 4 SA + 8 FFN, decoder 3 SA, 10 GA, 4 RSA, 1 FFN
ITM_ENC = "SA SA FFN FFN FFN SA FFN SA FFN FFN FFN FFN".split()
ITM_DEC = "SA GA GA RSA SA GA RSA GA GA GA GA FFN GA GA RSA SA GA RSA".split()


def test_published_itm_genotype():
    genotype = read_genotype(os.path.join(CONFIG_DIR, "genotypes", "mmnas_itm.json"))
    assert genotype == {"enc": ITM_ENC, "dec": ITM_DEC}
    assert [genotype["dec"].count(op) for op in ("SA", "GA", "RSA", "FFN")] == [3, 10, 4, 1]


def test_small_config_is_the_reference_recipe():
    cfg = load_config(os.path.join(CONFIG_DIR, "itm", "mmnasnet_small.yml"))
    assert cfg.model.enc == ITM_ENC and cfg.model.dec == ITM_DEC
    assert (cfg.model.hidden_size, cfg.model.flat_out, cfg.model.max_token, cfg.model.max_regions) == (512, 1024, 50, 36)
    t = cfg.train
    assert (t.lr_base, t.max_epoch, t.lr_decay_epochs, t.lr_decay_rate, t.warmup_epochs, t.batch_size, t.grad_clip) \
        == (1.5e-4, 100, [36], 0.2, 3, 64, 1.0)
    assert (t.betas, t.eps) == ([0.9, 0.98], 1e-9)


def test_tiny_config_builds_a_matching_net():
    cfg = load_config(os.path.join(CONFIG_DIR, "itm", "mmnasnet_tiny.yml")).model
    assert cfg.max_token == 50 and cfg.hidden_size == 64
    paddle.seed(0)
    net = MatchingNet(cfg, token_size=20)
    net.eval()
    feats = np.random.default_rng(0).normal(size=(2, 36, cfg.feat_size)).astype("float32")
    boxes = np.tile(np.array([10, 10, 60, 80], "float32"), (2, 36, 1))
    ids = np.zeros((2, 50), "int64")
    ids[:, :7] = 5
    out = net(paddle.to_tensor(feats), paddle.to_tensor(boxes), paddle.to_tensor(ids))
    assert out.shape == [2]
