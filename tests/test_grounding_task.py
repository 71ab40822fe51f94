"""The grounding task through the shared engine: a tiny model trained on the synthetic RefCOCO
(spec grounding_matching.md 5.1) learns to pick the named region (accuracy >= 4x chance) and its
box regression tightens the correct picks; --RUN=val writes one box per expression; both search
strategies take steps on grounding with a FLOP budget; --CKPT_PATH with a VQA checkpoint starts
a grounding model from its backbone with a fresh head and says what it took."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from mmnas import cli
from mmnas.checkpoint_files import safe_load
from mmnas.config import CONFIG_DIR, load_config
from mmnas.data.synthetic_refcoco import make_synthetic_refcoco
from mmnas.engine.checkpoint import ckpt_paths
from mmnas.engine.runner import open_dataset, open_vocab
from mmnas.engine.train import train
from mmnas.metrics.boxes import box_iou
from mmnas.tasks import task_of
from task_checks import fine_tune_takes_the_backbone, search_one_epoch_within_budget

FEAT = 32  # feature width of the synthetic world (and model.feat_size)
EPOCHS = 2  # measured: 37 % after one epoch, 97 % after two (chance 12.5 %)


def grounding_cfg(root, folder, version, **train):
    cfg = load_config("vgd_tiny")
    cfg.data.data_root = str(root)
    cfg.data.cache_dir = str(folder / "cache")
    cfg.model.feat_size = FEAT
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(folder / "results"), str(folder / "ckpt"), version
    cfg.train.max_epoch, cfg.train.lr_decay_epochs = EPOCHS, [EPOCHS]
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcoco_world")
    summary = make_synthetic_refcoco(str(root), "refcoco", n_train_images=400, n_eval_images=60,
                                     expressions_per_image=2, seed=0, feat_size=FEAT)
    return SimpleNamespace(root=root, summary=summary)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """The one trained grounding model every end-to-end check reads (EPOCHS epochs, val after each)."""
    folder = tmp_path_factory.mktemp("grounding_run")
    cfg = grounding_cfg(world.root, folder, "vgd", eval_every_epoch=True)
    summary = train(cfg, progress=False)
    return SimpleNamespace(cfg=cfg, summary=summary, folder=folder)


def test_the_grounding_datasets_run_the_grounding_task(world):
    cfg = load_config("vgd_tiny")
    for name in ("refcoco", "refcoco+", "refcocog"):
        cfg.data.dataset = name
        assert task_of(cfg).name == "grounding"
    cfg.data.dataset = "vqa"
    assert task_of(cfg).name == "answer"


def test_training_learns_to_ground_above_four_times_chance(trained, world):
    vals = [record["val"] for record in trained.summary["history"]]
    chance = world.summary["chance"]["val"]  # percent: 100 / regions
    assert chance == 12.5
    first, last = vals[0]["overall"], vals[-1]["overall"]
    assert last >= 4 * chance, (chance, [v["overall"] for v in vals])
    assert last > first
    # the losses went down and were finite
    losses = [record["loss"] for record in trained.summary["history"]]
    assert losses[-1] < losses[0]


def test_regression_tightens_the_correct_picks(trained, world):
    """Mean IoU of the hits with the decoded (regressed) box vs the picked raw proposal itself."""
    cfg = trained.cfg
    result = os.path.join(cfg.results_dir, "cache", f"result_run_vgd_epoch{EPOCHS}_refcoco_val.json")
    entries = json.load(open(result))
    vocab = open_vocab(cfg, False)
    dataset = open_dataset(cfg, "val", vocab, False)
    assert [e["expression_id"] for e in entries] == dataset.question_ids
    raw, regressed = [], []
    for i, entry in enumerate(entries):
        gt = dataset.gt_boxes[entry["expression_id"]]
        _, proposals = dataset.region_arrays(i)
        iou = box_iou(np.asarray(entry["box"])[None], gt[None])[0, 0]
        if iou >= 0.5:
            regressed.append(iou)
            raw.append(box_iou(proposals[entry["region"]][None].astype(np.float64), gt[None])[0, 0])
    assert len(regressed) > 0.5 * len(entries)
    assert np.mean(regressed) >= np.mean(raw) + 0.05, (np.mean(raw), np.mean(regressed))


def test_run_val_and_test_write_boxes_per_expression(trained, capsys):
    cfg = trained.cfg
    params, _ = ckpt_paths(cfg.ckpt_dir, "vgd", EPOCHS)
    # the model's feature width is a config value: a YAML that sets it
    yml = trained.folder / "vgd32.yml"
    yml.write_text(f"base: {os.path.join(CONFIG_DIR, 'vgd', 'mmnasnet_tiny.yml')}\n"
                   f"model: {{feat_size: {FEAT}}}\ndata: {{cache_dir: {cfg.data.cache_dir}}}\n")
    common = [f"--MODEL={yml}", f"--DATA_ROOT={cfg.data.data_root}", f"--CKPT_PATH={params}",
              f"--RESULTS_DIR={cfg.results_dir}", "--NW=0"]
    assert cli.main(["--RUN=val", *common]) == 0
    out = capsys.readouterr().out
    assert "accuracy@0.5" in out
    val_file = os.path.join(cfg.results_dir, "cache", f"result_run_epoch{EPOCHS}_refcoco_val.json")
    trained_file = os.path.join(cfg.results_dir, "cache", f"result_run_vgd_epoch{EPOCHS}_refcoco_val.json")
    assert json.load(open(val_file)) == json.load(open(trained_file))  # the same boxes as after training
    assert cli.main(["--RUN=val", "--EVAL_SPLIT=testB", *common]) == 0
    assert os.path.exists(os.path.join(cfg.results_dir, "cache", f"result_run_epoch{EPOCHS}_refcoco_testB.json"))
    assert cli.main(["--RUN=test", "--EVAL_SPLIT=testA", *common]) == 0
    assert os.path.exists(os.path.join(cfg.results_dir, "result_test", f"result_run_epoch{EPOCHS}_refcoco_testA.json")) \
        or os.path.exists(os.path.join(cfg.results_dir, "cache", f"result_run_epoch{EPOCHS}_refcoco_testA.json"))
    capsys.readouterr()
    assert cli.main(["--RUN=test", *common]) == 2  # refcoco has two test splits: say which
    assert "--EVAL_SPLIT" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["binary_gate", "snas"])
def test_search_steps_on_grounding_within_a_flop_budget(world, tmp_path, algorithm):
    """One epoch of each strategy on grounding, the budget set just above the cheapest genotype
    of the grounding model (its head's FLOPs, not the answer head's): the reported genotype fits."""
    cfg = load_config("search_vgd_tiny")
    cfg.search.algorithm = algorithm
    cfg.data.data_root, cfg.data.cache_dir = str(world.root), str(tmp_path / "cache")
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(tmp_path / "results"), str(tmp_path / "ckpt"), algorithm
    cfg.model.feat_size = FEAT
    cfg.data.split = "val"  # 120 expressions: a few steps of each kind, seconds not minutes
    cfg.train.max_epoch, cfg.train.batch_size, cfg.train.eval_batch_size = 1, 16, 16
    cfg.search.warmup_epochs = 0
    search_one_epoch_within_budget(cfg, "vgd_tiny", algorithm)


def test_fine_tune_from_a_vqa_checkpoint_takes_the_backbone(world, tmp_path, capsys):
    fine_tune_takes_the_backbone(grounding_cfg(world.root, tmp_path, "ft"), tmp_path, capsys,
                                 ("lstm.weight_ih_l0", "adapter.frcn_linear.weight",
                                  "backbone.enc_list.0.mhatt.linear_v.weight", "linear_rel.weight"))


def test_resume_on_grounding_replays_the_last_epoch_exactly(trained):
    """--RESUME after epoch 1 of the trained run ends with the same weights as its epoch 2."""
    import copy
    cfg = copy.deepcopy(trained.cfg)
    cfg.train.eval_every_epoch = False
    cfg.resume, cfg.ckpt_version, cfg.ckpt_epoch = True, "vgd", 1
    cfg.version = "vgd_resumed"
    train(cfg, progress=False)
    resumed = safe_load(ckpt_paths(cfg.ckpt_dir, "vgd_resumed", EPOCHS)[0])
    straight = safe_load(ckpt_paths(cfg.ckpt_dir, "vgd", EPOCHS)[0])
    assert set(resumed) == set(straight)
    for key in straight:
        np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(straight[key]), err_msg=key)


def test_the_vocabulary_beside_the_checkpoints_names_the_dataset(trained):
    """--RUN=val/test/predict read it to evaluate on the dataset of training (cli.adopt_trained_dataset)."""
    from mmnas.data.vocab import trained_dataset
    params, _ = ckpt_paths(trained.cfg.ckpt_dir, "vgd", EPOCHS)
    assert trained_dataset(params) == "refcoco"


def test_predict_gives_the_box_of_run_val(trained, capsys):
    """--RUN=predict with a val expression's words picks and decodes the same box as the val
    result file (and draws it)."""
    cfg = trained.cfg
    vocab = open_vocab(cfg, False)
    dataset = open_dataset(cfg, "val", vocab, False)
    entries = json.load(open(os.path.join(cfg.results_dir, "cache",
                                          f"result_run_vgd_epoch{EPOCHS}_refcoco_val.json")))
    params, _ = ckpt_paths(cfg.ckpt_dir, "vgd", EPOCHS)
    yml = trained.folder / "vgd32_predict.yml"
    yml.write_text(f"base: {os.path.join(CONFIG_DIR, 'vgd', 'mmnasnet_tiny.yml')}\nmodel: {{feat_size: {FEAT}}}\n")
    for i in (0, 7):
        expression = " ".join(dataset.refs[i]["tokens"])
        out = trained.folder / f"predict{i}.json"
        picture = trained.folder / f"predict{i}.png"
        code = cli.main(["--RUN=predict", f"--MODEL={yml}", f"--CKPT_PATH={params}", f"--FEATS={dataset.image_path(i)}",
                         f"--QUESTION={expression}", f"--OUT={out}", f"--PICTURE={picture}",
                         f"--RESULTS_DIR={cfg.results_dir}"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "chosen" in printed
        picks = json.load(open(out))["picks"]
        assert len(picks) == 5 and picks[0]["region"] == entries[i]["region"]
        np.testing.assert_allclose(picks[0]["box"], entries[i]["box"], atol=0.02)
        assert picks[0]["probability"] >= picks[1]["probability"]
        assert picture.stat().st_size > 0
