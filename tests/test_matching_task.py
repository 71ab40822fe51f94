"""The matching task through the shared engine: triplet batches keep each caption's three pairs
together, the negatives of each epoch (random, then mined, never a positive), a tiny model
trained on the synthetic Flickr30K (spec grounding_matching.md 5.3, scaled to a CPU test) ranks
above 4x chance both ways with a non-constant score matrix; --RUN=val rewrites the same
rankings; both search strategies take an epoch on matching with a FLOP budget; --CKPT_PATH with
a VQA checkpoint starts a matching model from its backbone with a fresh head."""
import json
import os
import re
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from mmnas import cli
from mmnas.config import CONFIG_DIR, load_config
from mmnas.data.flickr import CAPTIONS_PER_IMAGE
from mmnas.data.flickr_mining import mine_hard_negatives
from mmnas.data.synthetic_flickr import make_synthetic_flickr
from mmnas.engine.checkpoint import ckpt_paths
from mmnas.engine.runner import open_dataset, open_vocab
from mmnas.engine.train import train
from mmnas.metrics.retrieval import chance_recalls
from mmnas.models.matching_head import pair_scorer
from mmnas.tasks import task_of
from task_checks import fine_tune_takes_the_backbone, search_one_epoch_within_budget

FEAT = 32  # feature width of the synthetic world (and model.feat_size)
TOKENS = 11  # the synthetic captions have at most 10 words
TRAIN_IMAGES, EVAL_IMAGES = 300, 50
EPOCHS = 3


def matching_cfg(root, folder, version, **train):
    cfg = load_config("itm_tiny")
    cfg.data.data_root = str(root)
    cfg.data.cache_dir = str(folder / "cache")
    cfg.model.feat_size, cfg.model.max_token = FEAT, TOKENS
    cfg.results_dir, cfg.ckpt_dir, cfg.version = str(folder / "results"), str(folder / "ckpt"), version
    cfg.train.max_epoch, cfg.train.lr_decay_epochs = EPOCHS, [EPOCHS]
    cfg.train.batch_size, cfg.train.warmup_epochs = 32, 1
    cfg.matching.mine_from_epoch = EPOCHS  # random negatives (they learn faster here, spec 5.3)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr_world")
    make_synthetic_flickr(str(root), n_train_images=TRAIN_IMAGES, n_dev_images=EVAL_IMAGES,
                          n_test_images=EVAL_IMAGES, feat_size=FEAT, seed=0)
    return SimpleNamespace(root=root)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """40 training images (200 captions): enough for a search's two parts at batch 32, cheap to mine."""
    root = tmp_path_factory.mktemp("flickr_small")
    make_synthetic_flickr(str(root), n_train_images=40, n_dev_images=2, n_test_images=2, feat_size=FEAT, seed=3)
    return SimpleNamespace(root=root)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """The one trained matching model the end-to-end checks read (EPOCHS epochs, val after the last)."""
    folder = tmp_path_factory.mktemp("matching_run")
    cfg = matching_cfg(world.root, folder, "itm", eval_every_epoch=False)
    summary = train(cfg, progress=False)
    return SimpleNamespace(cfg=cfg, summary=summary, folder=folder)


def test_flickr30k_runs_the_matching_task():
    cfg = load_config("itm_small")
    assert cfg.data.dataset == "flickr30k" and task_of(cfg).name == "matching"


def test_a_triplet_batch_holds_each_captions_three_pairs(world, tmp_path):
    cfg = matching_cfg(world.root, tmp_path, "b")
    train_set = open_dataset(cfg, "train", open_vocab(cfg, False), False)
    captions = [0, 7, 13]
    batch = train_set.collate([train_set[c] for c in captions])
    flickr = train_set.dataset
    assert batch["token_ids"].shape == (3, 3, TOKENS) and batch["region_feats"].shape[:2] == (3, 3)
    assert batch["index"].tolist() == captions
    for b, c in enumerate(captions):
        image = c // CAPTIONS_PER_IMAGE
        images, caps = batch["image_index"][b], batch["caption_index"][b]
        assert images[0] == images[1] == image and caps[0] == caps[2] == c  # pos, negc, negi
        assert images[2] != image and caps[1] // CAPTIONS_PER_IMAGE != image  # never a positive
        for r in range(3):
            np.testing.assert_array_equal(batch["token_ids"][b, r], flickr.caption_ids(caps[r]))
            feats = flickr.image_arrays(images[r])[0]
            np.testing.assert_array_equal(batch["region_feats"][b, r, :len(feats)], feats)
    # the task's loss reads the roles in that order: the reference's loss on hand-split logits
    task = task_of(cfg)
    logits = paddle.to_tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -2.0], [-0.4, 1.5, 0.0]])
    losses = task.loss(logits.reshape([-1]), batch, cfg)
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    expected = -2 * np.log(p[:, 0]).sum() - np.log(1 - p[:, 1]).sum() - np.log(1 - p[:, 2]).sum()
    assert abs(float(losses["loss"]) - expected) < 1e-4
    # an accumulation piece keeps whole triplets
    piece = task.piece({k: paddle.to_tensor(v) for k, v in batch.items()}, 1, 3, n=1)
    assert piece["region_feats"].shape == [2, *batch["region_feats"].shape[1:]]


def test_negatives_random_before_the_start_epoch_then_mined(small_world, tmp_path):
    cfg = matching_cfg(small_world.root, tmp_path, "m")
    cfg.matching.mine_from_epoch, cfg.matching.mine_candidates = 1, 6
    vocab = open_vocab(cfg, False)
    train_set = open_dataset(cfg, "train", vocab, False)
    task = task_of(cfg)
    paddle.seed(0)
    model = task.build_model(cfg.model, vocab)
    n_img = train_set.n_images
    own_image = np.arange(len(train_set)) // CAPTIONS_PER_IMAGE
    task.before_epoch(model, train_set, cfg, 0, progress=False)
    random_caps, random_imgs = train_set.hard_captions.copy(), train_set.hard_images.copy()
    assert not (random_caps // CAPTIONS_PER_IMAGE == np.arange(n_img)[:, None]).any()
    assert not (random_imgs == own_image[:, None]).any()
    task.before_epoch(model, train_set, cfg, 1, progress=False)  # the start epoch: mined by the model
    assert train_set.epoch == 1
    expected = mine_hard_negatives(train_set.dataset, pair_scorer(model), k=6, keep=5,
                                   anchors_per_batch=cfg.matching.mine_anchors, seed=cfg.train.seed, epoch=1,
                                   progress=False)
    np.testing.assert_array_equal(train_set.hard_captions, expected[0])
    np.testing.assert_array_equal(train_set.hard_images, expected[1])
    assert not (train_set.hard_images == own_image[:, None]).any()
    assert not np.array_equal(train_set.hard_captions, random_caps)


@pytest.fixture(scope="module")
def validated(trained):
    """The trained model's validation (engine/train.py validate: the full dev matrix, the result file)."""
    from mmnas.checkpoint_files import load_weights
    from mmnas.engine.logger import RunLogger
    from mmnas.engine.train import validate
    cfg = trained.cfg
    vocab = open_vocab(cfg, False)
    task = task_of(cfg)
    model = task.build_model(cfg.model, vocab)
    load_weights(model, trained.summary["last_checkpoint"])
    dev = open_dataset(cfg, "val", vocab, False)
    scores = validate(model, dev, cfg, EPOCHS, RunLogger(cfg.results_dir, "itm_val", use_vdl=False), False, task)
    val_file = os.path.join(cfg.results_dir, "cache", f"result_run_itm_epoch{EPOCHS}_flickr30k_dev.json")
    return SimpleNamespace(scores=scores, dev=dev, val_file=val_file)


def test_training_ranks_above_four_times_chance_both_ways(trained, validated):
    scores, dev = validated.scores, validated.dev
    chance = chance_recalls(EVAL_IMAGES)
    for direction in ("i2t", "t2i"):
        assert scores[f"{direction}_r5"] >= 4 * chance[f"{direction}_r5"], scores
    assert scores["pairs"] == EVAL_IMAGES * CAPTIONS_PER_IMAGE * EVAL_IMAGES and scores["pairs_per_s"] > 0
    losses = [record["loss"] for record in trained.summary["history"]]
    assert losses[-1] < losses[0]
    result = validated.val_file
    entries = json.load(open(result))
    assert len(entries["i2t"]) == EVAL_IMAGES and len(entries["t2i"]) == EVAL_IMAGES * CAPTIONS_PER_IMAGE
    top_scores = np.array([e["scores"] for e in entries["i2t"]])
    assert top_scores.std() > 1e-4  # not a collapsed (constant) scorer
    assert (np.diff(top_scores, axis=1) <= 0).all()  # best first
    for entry in entries["i2t"]:  # the rank is the position of the first own caption
        own = [k for k, c in enumerate(entry["captions"]) if dev.image_ids[c // 5] == entry["image_id"]]
        if own:
            assert entry["rank"] == own[0]
        else:
            assert entry["rank"] >= len(entry["captions"])


def test_two_stage_evaluation_scores_a_fraction_of_the_pairs(trained):
    """matching.two_stage_top_k: the learned first stage, then full passes on its top 10 per
    image and per caption: at most 10 (n_img + n_cap) pairs, still far above chance."""
    import copy
    from mmnas.checkpoint_files import load_weights
    from mmnas.engine.evaluate import evaluate
    cfg = copy.deepcopy(trained.cfg)
    cfg.matching.two_stage_top_k = 10
    vocab = open_vocab(cfg, False)
    dev = open_dataset(cfg, "val", vocab, False)
    task = task_of(cfg)
    model = task.build_model(cfg.model, vocab)
    load_weights(model, trained.summary["last_checkpoint"])
    scores = evaluate(model, dev, name="two_stage", results_dir=cfg.results_dir, batch_size=128, progress=False,
                      task=task, run_cfg=cfg).scores
    n_cap = EVAL_IMAGES * CAPTIONS_PER_IMAGE
    assert 0 < scores["pairs"] <= 10 * (EVAL_IMAGES + n_cap) < EVAL_IMAGES * n_cap
    chance = chance_recalls(EVAL_IMAGES)
    for direction in ("i2t", "t2i"):
        assert scores[f"{direction}_r5"] >= 3 * chance[f"{direction}_r5"], scores


def test_run_val_and_test_rank_with_the_trained_weights(trained, validated, capsys):
    cfg = trained.cfg
    params, _ = ckpt_paths(cfg.ckpt_dir, "itm", EPOCHS)
    yml = trained.folder / "itm32.yml"
    yml.write_text(f"base: {os.path.join(CONFIG_DIR, 'itm', 'mmnasnet_tiny.yml')}\n"
                   f"model: {{feat_size: {FEAT}, max_token: {TOKENS}}}\ndata: {{cache_dir: {cfg.data.cache_dir}}}\n")
    common = [f"--MODEL={yml}", f"--DATA_ROOT={cfg.data.data_root}", f"--CKPT_PATH={params}",
              f"--RESULTS_DIR={cfg.results_dir}", "--NW=0"]
    assert cli.main(["--RUN=val", *common]) == 0
    out = capsys.readouterr().out
    assert "i2t R@1/5/10" in out and "pairs/s" in out
    val_file = os.path.join(cfg.results_dir, "cache", f"result_run_epoch{EPOCHS}_flickr30k_dev.json")
    ranks = lambda path: {d: [e["rank"] for e in json.load(open(path))[d]] for d in ("i2t", "t2i")}
    assert ranks(val_file) == ranks(validated.val_file)  # the same rankings as the validation
    assert cli.main(["--RUN=test", *common]) == 0
    assert os.path.exists(os.path.join(cfg.results_dir, "cache", f"result_run_epoch{EPOCHS}_flickr30k_test.json"))
    # two processes, each scoring half of the image rows: the same rankings, all pairs counted
    import subprocess
    import sys
    dp_results = trained.folder / "results_dp"
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(CONFIG_DIR), "run.py"), "--RUN=val",
                           *common[:-2], f"--RESULTS_DIR={dp_results}", "--NW=0", "--NPROCS=2"],
                          cwd=str(trained.folder), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp_file = os.path.join(str(dp_results), "cache", f"result_run_epoch{EPOCHS}_flickr30k_dev.json")
    assert ranks(dp_file) == ranks(val_file)
    assert json.load(open(dp_file))["pairs"] == json.load(open(val_file))["pairs"] == EVAL_IMAGES ** 2 * 5


@pytest.mark.parametrize("algorithm", ["binary_gate", "snas"])
def test_search_steps_on_matching_within_a_flop_budget(small_world, tmp_path, algorithm):
    """One epoch of each strategy on matching (mining from the search's start epoch, here 0, so
    the hook mines with the supernet), the budget just above the cheapest genotype."""
    cfg = load_config("search_tiny" if algorithm == "binary_gate" else "search_snas_tiny")
    itm = matching_cfg(small_world.root, tmp_path, f"s_{algorithm}")
    cfg.data, cfg.matching = itm.data, itm.matching
    cfg.results_dir, cfg.ckpt_dir, cfg.version = itm.results_dir, itm.ckpt_dir, itm.version
    cfg.model.max_token, cfg.model.feat_size = TOKENS, FEAT
    cfg.search.enc_positions, cfg.search.dec_positions = 2, 3  # a small supernet: one epoch stays quick
    cfg.train.max_epoch, cfg.train.batch_size, cfg.train.box_pieces = 1, 32, 1
    cfg.matching.mine_from_epoch, cfg.matching.mine_candidates = 0, 6
    cfg.search.warmup_epochs, cfg.search.target_model = 0, "itm_tiny"
    assert task_of(cfg).name == "matching"
    search_one_epoch_within_budget(cfg, "itm_tiny", algorithm)


def test_fine_tune_from_a_vqa_checkpoint_takes_the_backbone(world, tmp_path, capsys):
    fine_tune_takes_the_backbone(matching_cfg(world.root, tmp_path, "ft"), tmp_path, capsys,
                                 ("lstm.weight_ih_l0", "adapter.frcn_linear.weight",
                                  "backbone.enc_list.0.mhatt.linear_v.weight",
                                  "backbone.dec_list.0.mhatt.linear_q.weight", "linear_rel.weight"))


def test_two_process_training_with_mining_equals_one_process(small_world, tmp_path):
    """--NPROCS=2 mines half of the anchors in each process and gathers them in anchor order: the
    same tables, so the same epoch loss (mean over both processes' captions) and the same weights
    (dropout off) as one process after an epoch trained on mined negatives; the validation after
    it splits the image rows over the two and ranks as one process does. Biases whose gradient
    is zero in exact arithmetic (attention keys, AttFlat's logit: softmax ignores a constant)
    are moved by Adam on rounding noise alone, which differs with the batch split: they get a
    looser tolerance; the rest agree to 2e-4 (measured: 4e-5) after the epoch's 12 Adam steps."""
    import subprocess
    import sys
    from mmnas.checkpoint_files import safe_load
    root = small_world.root
    yml = tmp_path / "dp.yml"
    yml.write_text(f"base: {os.path.join(CONFIG_DIR, 'itm', 'mmnasnet_tiny.yml')}\n"
                   f"model: {{feat_size: {FEAT}, max_token: {TOKENS}, dropout: 0.0}}\n"
                   f"data: {{data_root: {root}, cache_dir: {tmp_path / 'cache'}}}\n"
                   "train: {batch_size: 16, max_epoch: 1, lr_decay_epochs: [1]}\n"
                   "matching: {mine_from_epoch: 0, mine_candidates: 6, mine_anchors: 4}\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(CONFIG_DIR), "run.py"), "--RUN=train", f"--MODEL={yml}",
         "--NPROCS=2", "--VERSION=dp", f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(str(yml))
    cfg.ckpt_dir, cfg.results_dir, cfg.version = str(tmp_path / "ckpt"), str(tmp_path / "results"), "one"
    summary = train(cfg, progress=False)
    line = re.search(r"epoch 1/1: loss ([0-9.]+)", proc.stdout)
    assert line, proc.stdout[-2000:]
    assert float(line.group(1)) == pytest.approx(summary["history"][0]["loss"], abs=2e-5)
    # the validation after the epoch, its image rows split over the two processes: the same rankings
    val = re.search(r"epoch 1 val: i2t R@1/5/10 (\S+) medr (\S+) meanr (\S+) \| t2i R@1/5/10 (\S+) medr (\S+) "
                    r"meanr (\S+) \| rsum (\S+) \| (\d+) pairs", proc.stdout)
    assert val, proc.stdout[-2000:]
    scores = summary["history"][0]["val"]
    assert val.group(1) == "/".join(f"{scores[f'i2t_r{k}']:.2f}" for k in (1, 5, 10))
    assert val.group(4) == "/".join(f"{scores[f't2i_r{k}']:.2f}" for k in (1, 5, 10))
    assert float(val.group(3)) == pytest.approx(scores["i2t_meanr"], abs=0.05)
    assert int(val.group(8)) == scores["pairs"] == 2 * 10  # 2 dev images x 10 captions, all of them
    dp, one = (safe_load(ckpt_paths(cfg.ckpt_dir, v, 1)[0]) for v in ("dp", "one"))
    assert set(dp) == set(one)
    for key in one:
        noise_only = key.endswith("linear_k.bias") or (key.startswith("head.attflat") and key.endswith("mlp.linear.bias"))
        np.testing.assert_allclose(np.asarray(dp[key]), np.asarray(one[key]), rtol=1e-5,
                                   atol=2e-3 if noise_only else 2e-4, err_msg=key)


def test_predict_ranks_as_the_evaluation_scores(trained, validated, tmp_path, capsys):
    """--RUN=predict's rankings and probabilities are the validation's score matrix: the 10 best
    captions of a dev image (from a text file) and the 10 best images of a caption (a folder)."""
    import shutil
    from mmnas.data.flickr import FEATURE_DIR, ITM_DIR
    from mmnas.data.synthetic_flickr import feature_file_name
    cfg = trained.cfg
    entries = json.load(open(validated.val_file))
    dev = validated.dev
    params, _ = ckpt_paths(cfg.ckpt_dir, "itm", EPOCHS)
    yml = trained.folder / "itm32p.yml"
    yml.write_text(f"base: {os.path.join(CONFIG_DIR, 'itm', 'mmnasnet_tiny.yml')}\n"
                   f"model: {{feat_size: {FEAT}, max_token: {TOKENS}}}\n")
    common = ["--RUN=predict", f"--MODEL={yml}", f"--CKPT_PATH={params}", "--TOPK=10"]
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))
    feats_dir = os.path.join(str(cfg.data.data_root), ITM_DIR, FEATURE_DIR)

    image = entries["i2t"][0]
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(dev.captions[c] for c in reversed(image["captions"])) + "\n")
    out = tmp_path / "i2t.json"
    image_file = os.path.join(feats_dir, feature_file_name(int(image["image_id"])))
    assert cli.main([*common, f"--FEATS={image_file}", f"--CAPTIONS={captions}", f"--OUT={out}"]) == 0
    ranked = json.load(open(out))["ranked"]
    assert [e["caption"] for e in ranked] == [dev.captions[c] for c in image["captions"]]
    np.testing.assert_allclose([e["score"] for e in ranked], sigmoid(image["scores"]), atol=1e-5)

    caption = entries["t2i"][0]
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in caption["images"]:
        shutil.copy(os.path.join(feats_dir, feature_file_name(int(image_id))), folder)
    out = tmp_path / "t2i.json"
    assert cli.main([*common, f"--FEATS={folder}", f"--QUESTION={dev.captions[0]}", f"--OUT={out}"]) == 0
    ranked = json.load(open(out))["ranked"]
    assert [os.path.basename(e["feats"]) for e in ranked] == [feature_file_name(int(i)) for i in caption["images"]]
    np.testing.assert_allclose([e["score"] for e in ranked], sigmoid(caption["scores"]), atol=1e-5)
    assert "top 10 of 10 images" in capsys.readouterr().out


def test_resume_after_a_mined_epoch_replays_the_next_exactly(small_world, tmp_path):
    """Negatives are mined from the model at the start of each epoch, so a run resumed after
    epoch 1 mines the same tables before epoch 2 and ends with the weights of the straight run."""
    import copy
    from mmnas.checkpoint_files import safe_load
    cfg = matching_cfg(small_world.root, tmp_path, "straight", max_epoch=2, eval_every_epoch=False,
                       lr_decay_epochs=[2])
    cfg.matching.mine_from_epoch, cfg.matching.mine_candidates = 1, 6
    train(cfg, progress=False)
    resumed = copy.deepcopy(cfg)
    resumed.resume, resumed.ckpt_version, resumed.ckpt_epoch, resumed.version = True, "straight", 1, "resumed"
    train(resumed, progress=False)
    a, b = (safe_load(ckpt_paths(cfg.ckpt_dir, v, 2)[0]) for v in ("straight", "resumed"))
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
