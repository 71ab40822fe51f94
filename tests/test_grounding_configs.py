"""The visual grounding configs: the published VGD genotype (spec 0.2), the reference recipe
(train_vgd.py), the tiny CPU config, and the dataset/split names the config accepts."""
import os

import pytest

from mmnas.config import CONFIG_DIR, ConfigError, config_from_dict, load_config, read_genotype

VGD_ENC = "SA FFN FFN SA FFN FFN FFN FFN FFN FFN FFN SA".split()
VGD_DEC = "GA GA GA GA GA GA FFN GA RSA RSA GA FFN RSA GA GA RSA GA RSA".split()


def test_published_genotype_file_and_small_recipe():
    genotype = read_genotype(os.path.join(CONFIG_DIR, "genotypes", "mmnas_vgd.json"))
    assert genotype == {"enc": VGD_ENC, "dec": VGD_DEC}
    assert (len(VGD_ENC), VGD_ENC.count("SA")) == (12, 3) and (len(VGD_DEC), VGD_DEC.count("GA"),
                                                              VGD_DEC.count("RSA")) == (18, 11, 5)
    cfg = load_config("vgd_small")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.enc, m.dec) == (VGD_ENC, VGD_DEC)
    assert (m.hidden_size, m.heads, m.flat_out, m.rel_size, m.max_regions, m.max_token) == (512, 8, 1024, 64, 100, 15)
    assert (t.lr_base, t.max_epoch, t.lr_decay_epochs, t.lr_decay_rate, t.warmup_epochs) == (1.4e-4, 13, [10, 12], 0.2, 3)
    assert (t.batch_size, t.grad_clip, t.betas, t.eps) == (64, 1.0, [0.9, 0.98], 1e-9)
    assert (d.dataset, d.split, d.eval_split) == ("refcoco", "train", "val")


def test_tiny_config():
    cfg = load_config("vgd_tiny")
    assert cfg.model.hidden_size == 64 and cfg.model.max_token == 15 and cfg.data.dataset == "refcoco"
    assert cfg.model.enc == ["SA", "FFN", "SA", "FFN"] and cfg.model.dec == ["GA", "RSA", "FFN"] * 2


@pytest.mark.parametrize("dataset, good, bad", [("refcoco", ["val", "testA", "testB"], ["test", "testdev"]),
                                                ("refcoco+", ["testB"], ["test"]),
                                                ("refcocog", ["val", "test"], ["testA"])])
def test_evaluation_splits_per_dataset(dataset, good, bad):
    for split in good:
        assert config_from_dict({"data": {"dataset": dataset, "split": "train+val", "eval_split": split}}).data.eval_split == split
    for split in bad:
        with pytest.raises(ConfigError, match="eval_split"):
            config_from_dict({"data": {"dataset": dataset, "split": "train", "eval_split": split}})
    with pytest.raises(ConfigError, match="not a training split"):
        config_from_dict({"data": {"dataset": dataset, "split": "train+vg", "eval_split": "val"}})
