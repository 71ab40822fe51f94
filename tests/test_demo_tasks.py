"""The web demo's grounding and retrieval modes, without a browser: the page the demo builds
follows the checkpoint's task (make_backend), the grounding page's chosen box and runners-up
are `--RUN=predict`'s for the same expression, the retrieval page's ranking of the listed images
is `--RUN=predict --FEATS=<folder>`'s, and user errors come back as a sentence on the page. The
models are tiny and trained for one epoch on the synthetic worlds (the comparison is with the
command line, not with the truth)."""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from mmnas import cli, web_demo
from mmnas.config import CONFIG_DIR, load_config
from mmnas.data.flickr import FEATURE_DIR as FLICKR_FEATURES, ITM_DIR
from mmnas.data.refcoco import FEATURE_DIR as REFCOCO_FEATURES
from mmnas.data.synthetic_flickr import make_synthetic_flickr
from mmnas.data.synthetic_refcoco import make_synthetic_refcoco
from mmnas.engine.checkpoint import ckpt_paths
from mmnas.engine.train import train

FEAT = 32  # feature width of the synthetic worlds (and model.feat_size)
TOKENS = 11  # the synthetic captions have at most 10 words


def trained_model(folder, name, yml_body, make_world, **cfg_overrides):
    """(YAML path, weights path, feature folder) of a model of config `name` trained one epoch."""
    root = folder / "data"
    feats_dir = make_world(str(root))
    yml = folder / f"{name}.yml"
    yml.write_text(yml_body)
    cfg = load_config(str(yml))
    cfg.data.data_root, cfg.data.cache_dir = str(root), str(folder / "cache")
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(folder / "results"), str(folder / "ckpt"), name
    cfg.train.max_epoch, cfg.train.lr_decay_epochs, cfg.train.eval_every_epoch = 1, [1], False
    for key, value in cfg_overrides.items():
        setattr(cfg.train, key, value)
    train(cfg, progress=False)
    return SimpleNamespace(yml=str(yml), params=ckpt_paths(cfg.ckpt_dir, name, 1)[0], feats_dir=feats_dir,
                           results=cfg.results_dir)


@pytest.fixture(scope="module")
def grounding(tmp_path_factory):
    def world(root):
        make_synthetic_refcoco(root, "refcoco", n_train_images=40, n_eval_images=6, expressions_per_image=2,
                               seed=0, feat_size=FEAT)
        return os.path.join(root, REFCOCO_FEATURES)
    return trained_model(tmp_path_factory.mktemp("demo_grounding"), "vgd",
                         f"base: {os.path.join(CONFIG_DIR, 'vgd', 'mmnasnet_tiny.yml')}\nmodel: {{feat_size: {FEAT}}}\n",
                         world)


@pytest.fixture(scope="module")
def matching(tmp_path_factory):
    def world(root):
        make_synthetic_flickr(root, n_train_images=40, n_dev_images=2, n_test_images=2, feat_size=FEAT, seed=3)
        return os.path.join(root, ITM_DIR, FLICKR_FEATURES)
    return trained_model(tmp_path_factory.mktemp("demo_matching"), "itm",
                         f"base: {os.path.join(CONFIG_DIR, 'itm', 'mmnasnet_tiny.yml')}\n"
                         f"model: {{feat_size: {FEAT}, max_token: {TOKENS}}}\n", world, batch_size=32, warmup_epochs=1)


def demo_backend(model, topk):
    return web_demo.make_backend(web_demo.parse_args([f"--MODEL={model.yml}", f"--CKPT_PATH={model.params}",
                                                      f"--FEATS_DIR={model.feats_dir}", f"--TOPK={topk}"]))


def test_grounding_page_shows_the_box_of_run_predict(grounding, tmp_path, capsys):
    backend = demo_backend(grounding, topk=4)
    assert isinstance(backend, web_demo.GroundingBackend) and backend.task == "grounding"  # from the task
    names = backend.names[:2]
    for name, expression in zip(names, ("the red cup", "the small blue ball on the left")):
        rows, picture, notes = backend.page(name, None, expression)
        out = tmp_path / f"{name}.json"
        assert cli.main(["--RUN=predict", f"--MODEL={grounding.yml}", f"--CKPT_PATH={grounding.params}",
                         f"--FEATS={os.path.join(grounding.feats_dir, name)}", f"--QUESTION={expression}",
                         "--TOPK=4", f"--OUT={out}", f"--PICTURE={tmp_path / (name + '.png')}",
                         f"--RESULTS_DIR={grounding.results}"]) == 0
        picks = json.load(open(out))["picks"]
        assert [row[0] for row in rows] == [1, 2, 3, 4]
        assert [row[1] for row in rows] == [p["region"] for p in picks]  # the chosen box first, then the runners-up
        np.testing.assert_allclose([row[3:] for row in rows], [p["box"] for p in picks], atol=1e-6)
        np.testing.assert_allclose([row[2] for row in rows], [round(100 * p["probability"], 1) for p in picks])
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
        assert (picture != 255).any(axis=2).mean() > 0.01  # boxes were drawn on the white canvas
        assert f"region {picks[0]['region']}" in notes
    capsys.readouterr()

    # an uploaded copy of a listed file gives the same boxes (the upload is deleted once read)
    upload = tmp_path / "upload.npz"
    shutil.copy(os.path.join(grounding.feats_dir, names[0]), upload)
    assert backend.page(None, str(upload), "the red cup")[0] == backend.page(names[0], None, "the red cup")[0]
    assert not upload.exists()

    # user errors are sentences on the page, not exceptions
    for name, expression, says in ((names[0], "  ", "has no words"), (names[0], "zzz qqq", "vocabulary"),
                                   (None, "the red cup", "choose an image")):
        rows, picture, notes = backend.page(name, None, expression)
        assert rows == [] and picture is None and notes.startswith("**Cannot ground:**") and says in notes


def test_retrieval_page_ranks_as_run_predict(matching, tmp_path, capsys):
    backend = demo_backend(matching, topk=6)
    assert isinstance(backend, web_demo.RetrievalBackend) and backend.task == "matching"
    assert len(backend.names) == 44
    for caption in ("a red cup and a blue dog", "a green car"):
        rows, best, notes = backend.page(caption)
        out = tmp_path / "t2i.json"
        assert cli.main(["--RUN=predict", f"--MODEL={matching.yml}", f"--CKPT_PATH={matching.params}",
                         f"--FEATS={matching.feats_dir}", f"--QUESTION={caption}", "--TOPK=6", f"--OUT={out}"]) == 0
        ranked = json.load(open(out))["ranked"]
        assert [row[1] for row in rows] == [os.path.basename(e["feats"]) for e in ranked]
        np.testing.assert_allclose([row[2] for row in rows], [round(e["score"], 4) for e in ranked])
        assert [row[0] for row in rows] == [1, 2, 3, 4, 5, 6]
        assert best is None  # the synthetic Flickr world has no photos
        assert "of 44 images" in notes
    capsys.readouterr()
    for caption, says in (("  ", "the caption '  ' has no words"), ("zzz qqq", "vocabulary")):
        rows, best, notes = backend.page(caption)
        assert rows == [] and best is None and notes.startswith("**Cannot rank:**") and says in notes


def test_retrieval_needs_a_feature_folder(matching):
    with pytest.raises(web_demo.DemoError, match="--FEATS_DIR"):
        web_demo.make_backend(web_demo.parse_args([f"--MODEL={matching.yml}", f"--CKPT_PATH={matching.params}"]))


def test_the_pages_of_both_modes_build(grounding, matching):
    pytest.importorskip("gradio", reason="the web demo needs Gradio: pip install -e \".[demo]\"")
    for model, endpoint in ((grounding, "/ground"), (matching, "/rank")):
        demo = web_demo.build_demo(demo_backend(model, topk=3))
        assert endpoint in demo.get_api_info()["named_endpoints"]
