"""VisualDL beyond the curves: the hyper-parameters on the hparams page, and the attention picture
of the same few val questions after every epoch (image tab), read back from the VisualDL record."""
import glob
import io
import os

import numpy as np
import pytest

from mmnas.config import load_config
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.engine.train import train
from mmnas.engine.watch_attention import HPARAM_METRICS, WATCHED_QUESTIONS, hparams_of, watched_questions

visualdl = pytest.importorskip("visualdl", reason="VisualDL is not installed (pip install visualdl)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=40, n_val_images=12, n_test_images=4, n_vg_images=4,
                       questions_per_image=2, seed=3, min_boxes=10, max_boxes=16, pictures=True)
    cfg = load_config(os.path.join(REPO, "configs", "vqa", "mmnasnet_tiny.yml"))
    cfg.model.hidden_size, cfg.model.flat_mlp, cfg.model.flat_out = 32, 32, 64
    cfg.data.data_root, cfg.data.split, cfg.data.cache_dir = str(data_root), "train", str(root / "cache")
    cfg.train.batch_size, cfg.train.max_epoch, cfg.train.eval_every_epoch = 16, EPOCHS, True
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(root / "results"), str(root / "ckpt"), "watch"
    train(cfg, progress=False)
    files = glob.glob(os.path.join(cfg.results_dir, "vdl", "watch", "vdlrecords.*.log"))
    assert len(files) == 1, files
    return cfg, visualdl.LogReader(file_path=files[0])


def test_attention_pictures_of_the_same_questions_after_every_epoch(watched_run):
    from PIL import Image
    cfg, reader = watched_run
    tags = sorted(reader.get_tags()["image"])
    assert len(tags) == WATCHED_QUESTIONS and all(t.startswith("attention_vqa/q") for t in tags), tags
    for tag in tags:
        records = sorted(reader.get_data("image", tag), key=lambda r: r.id)
        assert [r.id for r in records] == list(range(1, EPOCHS + 1))  # one picture per epoch, step = epoch
        pictures = [np.asarray(Image.open(io.BytesIO(r.image.encoded_image_string)).convert("RGB")) for r in records]
        assert pictures[0].shape[0] > 100 and pictures[0].shape[1] > 100
        assert pictures[0].std() > 10  # a picture, not a blank
    # the question ids in the tags are those watched_questions picks from val
    from mmnas.data import VQADataset, build_vocab
    val = VQADataset(cfg.data.data_root, "val", build_vocab(cfg.data.data_root, cfg.data.cache_dir), progress=False)
    expected = sorted(f"attention_vqa/q{val.question_ids[i]}" for i in watched_questions(val))
    assert tags == expected


def test_hparams_page_has_the_run_config_and_its_metrics(watched_run):
    cfg, reader = watched_run
    (tag,) = reader.get_tags()["hyper_parameters"]
    (record,) = reader.get_data("hyper_parameters", tag)
    infos = {}
    for info in record.hparam.hparamInfos:
        infos[info.name] = getattr(info, info.WhichOneof("type"))
    assert infos["config"] == "mmnasnet_tiny.yml"
    assert infos["model.hidden_size"] == 32 and infos["train.batch_size"] == 16
    assert infos["model.enc"] == " ".join(cfg.model.enc) and infos["data.split"] == "train"
    assert infos["train.eval_every_epoch"] == "True"
    assert [m.name for m in record.hparam.metricInfos] == HPARAM_METRICS
    scalar_tags = set(reader.get_tags()["scalar"])
    assert set(HPARAM_METRICS) <= scalar_tags  # every metric the page lists is a scalar of the run


def test_visualdl_sections_put_training_first_and_name_the_dataset(watched_run):
    """VisualDL orders its sections by the tag's first part, case-insensitively: a training's come
    first (the search's are 3_search and 4_search_ops, tests/test_search.py), and the attention
    pictures are in a section of their dataset."""
    cfg, reader = watched_run
    tags = reader.get_tags()
    assert sorted({t.split("/")[0] for t in tags["scalar"]}, key=str.upper) == ["1_train", "2_val"]
    assert {"1_train/loss", "1_train/lr", "1_train/epoch_loss", "2_val/overall", "2_val/yes/no"} <= set(tags["scalar"])
    assert {t.split("/")[0] for t in tags["image"]} == {"attention_vqa"}


def test_hparams_of_keeps_only_visualdl_value_types():
    values = hparams_of(load_config("tiny").to_dict())
    assert values and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values.values())
    assert "data.data_root" not in values and "search.arch_lr" not in values
