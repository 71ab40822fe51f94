"""The architecture search: supernet paths are MMNasNets, weight and architecture steps touch
only what they should, the gate-gradient estimate, genotype files, and exact resume."""
import copy
import json
import os

import numpy as np
import paddle
import pytest

from mmnas.cli import main as cli_main
from mmnas.config import ConfigError, ModelConfig, SearchConfig, config_from_dict, load_config, read_genotype
from mmnas.checkpoint_files import load_weights, match_state_dict, safe_load
from mmnas.engine.checkpoint import materialize_optimizer_state
from mmnas.search import partition_split
from mmnas.search.binary_gate import BinaryGate, arch_step, weight_step
from mmnas.models import MMNasNet
from mmnas.models.supernet import MixedOp, SuperNet

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def tiny_model_cfg():
    return ModelConfig(hidden_size=16, heads=2, rel_head_width=8, rel_size=8, flat_mlp=16, flat_out=32,
                       word_embed=12)


def tiny_search_cfg(**overrides):
    cfg = SearchConfig(enc_positions=3, dec_positions=4, enc_ops=["SA", "FFN", "skip"],
                       dec_ops=["SA", "GA", "RSA", "FFN", "skip"], warmup_epochs=0, arch_every=1)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def random_batch(rng, b=3, n=7, vocab=40, answers=6):
    """Region features with zero (padding) rows, boxes, question ids with PAD, soft targets."""
    feats = rng.uniform(0, 2, (b, n, 2048)).astype("float32")
    xy = rng.uniform(0, 300, (b, n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 150, (b, n, 2))], -1).astype("float32")
    ids = rng.integers(1, vocab, (b, 14)).astype("int64")
    feats[1, -2:] = 0
    boxes[1, -2:] = 0
    ids[:, 9:] = 0
    scores = (rng.random((b, answers)) < 0.3).astype("float32")
    return [paddle.to_tensor(x) for x in (feats, boxes, ids, scores)]


def make_supernet(seed=0, **search_overrides):
    paddle.seed(seed)
    return SuperNet(tiny_model_cfg(), tiny_search_cfg(**search_overrides), token_size=40, answer_size=6)


def snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def run_cfg(**search_overrides):
    cfg = config_from_dict({})
    cfg.model, cfg.search = tiny_model_cfg(), tiny_search_cfg(**search_overrides)
    cfg.train.grad_clip = 1.0
    return cfg


# ---- supernet --------------------------------------------------------------------------------

def test_sampled_path_forward_equals_standalone_mmnasnet():
    net = make_supernet()
    net.eval()
    rng = np.random.default_rng(1)
    feats, boxes, ids, _ = random_batch(rng)
    seen_skip = False
    for _ in range(4):
        net.sample_path(rng)
        path = net.active_path()
        seen_skip |= "skip" in path["enc"] + path["dec"]
        standalone = MMNasNet(net.standalone_config(), 40, 6)
        standalone.set_state_dict(match_state_dict(standalone, net.standalone_state_dict()))
        standalone.eval()
        expected = standalone(feats, None, boxes, ids).numpy()
        np.testing.assert_allclose(net(feats, None, boxes, ids).numpy(), expected, atol=1e-5, rtol=0)
        # the gated (architecture-step) forward of the same path has the same value
        for m in net.mixed_ops():
            m.involved = list(range(len(m.ops)))
            m.gate = paddle.to_tensor(np.eye(len(m.ops), dtype="float32")[m.active], stop_gradient=False)
        np.testing.assert_allclose(net(feats, None, boxes, ids).numpy(), expected, atol=1e-5, rtol=0)
        net.close_gates()
    assert seen_skip  # skipped positions are dropped from the standalone genotype


def test_weight_step_trains_only_the_sampled_path():
    net = make_supernet()
    cfg = run_cfg()
    weight_opt, arch_opt = BinaryGate(net, cfg).build_optimizers(lr_base=1e-2)
    materialize_optimizer_state(weight_opt, net.weight_parameters())
    batch = random_batch(np.random.default_rng(2))

    # gradients: exactly the sampled path (and the shared parts) receive them
    net.sample_path(np.random.default_rng(3))
    feats, boxes, ids, scores = batch
    paddle.nn.functional.binary_cross_entropy_with_logits(net(feats, None, boxes, ids), scores).backward()
    for m in net.mixed_ops():
        for j, cand in enumerate(m.candidates):
            for p in cand.parameters():
                assert (p.grad is not None) == (j == m.active)
        assert m.alpha.grad is None
    weight_opt.clear_grad(set_to_zero=False)

    # a weight step moves the sampled path's weights, nothing of the others, not alpha
    before = snapshot(net)
    weight_step(net, net, weight_opt, batch, 1e-2, cfg, np.random.default_rng(3))
    after = snapshot(net)
    path = net.active_path()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    for part in ("enc", "dec"):
        for i, (m, op) in enumerate(zip(net.mixed_ops(part), path[part])):
            for j in range(len(m.ops)):
                keys = {k for k in before if k.startswith(f"backbone.{part}_list.{i}.candidates.{j}.")}
                if j == m.active:
                    assert keys <= changed, f"{part}{i} {op} was sampled but not trained"
                else:
                    assert not keys & changed, f"{part}{i} {m.ops[j]} was not sampled but changed"
            assert f"backbone.{part}_list.{i}.alpha" not in changed
    assert "proj.weight" in changed and "lstm.weight_ih_l0" in changed


def test_arch_step_moves_only_alpha():
    for mode in ("full", "two"):
        net = make_supernet(arch_mode=mode)
        cfg = run_cfg(arch_mode=mode)
        weight_opt, arch_opt = BinaryGate(net, cfg).build_optimizers(lr_base=1e-2)
        before = snapshot(net)
        arch_step(net, net, arch_opt, weight_opt, random_batch(np.random.default_rng(4)), cfg,
                  np.random.default_rng(5))
        after = snapshot(net)
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        assert changed and all(k.endswith(".alpha") for k in changed), mode
        assert all(p.grad is None for p in net.parameters())
        if mode == "two":  # at most the two involved logits move, their total probability kept
            for key in changed:
                moved = np.nonzero(before[key] != after[key])[0]
                assert len(moved) <= 2
                np.testing.assert_allclose(np.exp(after[key][moved]).sum(), np.exp(before[key][moved]).sum(),
                                           rtol=1e-5)


def test_gate_gradients_and_alpha_gradient_estimate():
    """g_j = <dL/dout, o_j> for every candidate; dL/dalpha_i = sum_j g_j p_j (delta_ij - p_i)."""
    paddle.seed(0)
    cfg = tiny_model_cfg()
    op = MixedOp(["SA", "FFN", "skip"], cfg, alpha_init_std=0.5)
    op.eval()
    rng = np.random.default_rng(6)
    x = paddle.to_tensor(rng.standard_normal((2, 5, 16)).astype("float32"))
    mask = paddle.zeros([2, 1, 1, 5], dtype="bool")
    w = rng.standard_normal((2, 5, 16)).astype("float32")
    op.sample(rng, "full")
    (op(x, None, mask) * paddle.to_tensor(w)).sum().backward()
    outputs = [cand(x, None, mask).numpy() for cand in op.candidates]
    g = np.array([(w * o).sum() for o in outputs])
    np.testing.assert_allclose(op.gate.grad.numpy(), g, rtol=1e-4, atol=1e-4)
    p = op.probs()
    expected = np.array([sum(g[j] * p[j] * ((i == j) - p[i]) for j in range(3)) for i in range(3)])
    np.testing.assert_allclose(op.alpha_grad(), expected, rtol=1e-4, atol=1e-5)
    for j, cand in enumerate(op.candidates):  # the others were measured, not trained
        assert all((q.grad is not None) == (j == op.active) for q in cand.parameters())


def test_split_parts_is_a_seeded_partition():
    a, b = partition_split(103, 0.8, 7), partition_split(103, 0.8, 7)
    assert np.array_equal(a.weight, b.weight) and len(a.weight) == 82 and len(a.arch) == 21
    assert sorted(np.concatenate([a.weight, a.arch]).tolist()) == list(range(103))
    assert not np.array_equal(partition_split(103, 0.8, 8).arch, a.arch)


def test_search_configs_and_validation():
    for name, positions in (("search", (12, 18)), ("search_tiny", (12, 18))):
        cfg = load_config(name)
        assert (len(cfg.search.pools("enc")), len(cfg.search.pools("dec"))) == positions
    per_position = SearchConfig(enc_positions=2, dec_positions=2, enc_ops=[["SA"], ["SA", "skip"]],
                                dec_ops=[["GA", "RSA"], ["FFN"]])
    per_position.validate()
    assert per_position.pools("enc") == [["SA"], ["SA", "skip"]]
    with pytest.raises(ConfigError, match="position 0"):
        SearchConfig(enc_ops=["SA", "GA"]).validate()  # GA needs the image: not an encoder op
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"search": {"warmup": 3}})


# ---- the search run: CLI, genotype files, resume ----------------------------------------------

@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from mmnas.data.synthetic import make_synthetic_vqa
    root = str(tmp_path_factory.mktemp("synth"))
    make_synthetic_vqa(root, n_train_images=16, n_val_images=4, n_test_images=2, n_vg_images=2,
                       questions_per_image=3, min_boxes=4, max_boxes=8)
    return root


def search_yaml(tmp_path):
    path = tmp_path / "search_test.yml"
    path.write_text(
        f"base: {os.path.join(CONFIGS, 'search', 'search_vqa_tiny.yml')}\n"
        "model: {hidden_size: 16, heads: 2, rel_head_width: 8, rel_size: 8, flat_mlp: 16, flat_out: 32, word_embed: 12}\n"
        "train: {batch_size: 8, warmup_epochs: 0}\n"
        "search: {enc_positions: 2, dec_positions: 3, enc_ops: [SA, FFN, skip], warmup_epochs: 1, arch_every: 1}\n")
    return str(path)


def run_search(tmp_path, root, *args):
    code = cli_main(["--RUN=search", f"--MODEL={search_yaml(tmp_path)}", f"--DATA_ROOT={root}",
                     f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}", *args])
    assert code == 0


def test_resume_equals_uninterrupted_and_genotype_trains(tmp_path, synthetic_root, capsys):
    run_search(tmp_path, synthetic_root, "--VERSION=whole", "--MAX_EPOCH=3")
    console = capsys.readouterr().out
    run_search(tmp_path, synthetic_root, "--VERSION=part", "--MAX_EPOCH=2")
    run_search(tmp_path, synthetic_root, "--RESUME=True", "--CKPT_V=part", "--CKPT_E=2", "--MAX_EPOCH=3")

    ckpt = lambda version, ext: safe_load(str(tmp_path / "ckpt" / f"ckpt_{version}" / f"epoch3.{ext}"))
    whole, part = ckpt("whole", "pdparams"), ckpt("part", "pdparams")
    assert whole.keys() == part.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], part[key], err_msg=key)
    opt_whole, opt_part = ckpt("whole", "pdopt"), ckpt("part", "pdopt")
    for name in ("optimizer", "arch_optimizer"):
        assert opt_whole[name].keys() == opt_part[name].keys()
        for key, value in opt_whole[name].items():
            np.testing.assert_array_equal(value, opt_part[name][key], err_msg=key)
    reports = {v: json.load(open(tmp_path / "results" / "search" / v / "epoch3.json")) for v in ("whole", "part")}
    for key in ("genotype", "probabilities", "weight_loss", "arch_loss", "top_path_score"):
        assert reports["whole"][key] == reports["part"][key], key
    # alpha moved after the warm-up epoch only
    first = json.load(open(tmp_path / "results" / "search" / "whole" / "epoch1.json"))
    assert first["phase"] == "warm-up" and reports["whole"]["phase"] == "search"
    assert max(abs(p - 1 / len(ps)) for ps in first["probabilities"]["dec"] for p in ps) < 1e-2
    assert reports["whole"]["probabilities"] != first["probabilities"]
    # the console: the warm-up said as such, then the genotype; scores and probabilities in percent
    epoch1, later = console.split("search epoch 1/3:")[1].split("search epoch 2/3:")
    assert "architecture steps from epoch 2 (epoch 1: warm-up, weight steps only)" in console
    assert "architecture frozen until epoch 2 (warm-up)" in epoch1 and "enc:" not in epoch1 and "GFLOPs" not in epoch1
    assert f"  enc: {' '.join(reports['whole']['genotype']['enc'])}\n" in later.split("search epoch 3/3:")[1]
    assert f"top path score {100 * reports['whole']['top_path_score']:.2f}%" in console
    with open(tmp_path / "results" / "log" / "log_run_whole.txt", encoding="utf-8") as f:
        log = f.read()
    p00 = reports["whole"]["probabilities"]["dec"][0]
    assert "  p(dec00) " + " ".join(f"{op} {100 * p:.1f}%" for op, p in zip(reports["whole"]["ops"]["dec"][0], p00)) in log
    assert (tmp_path / "results" / "search" / "whole" / "epoch3.png").is_file()
    # VisualDL: the search's charts in two sections, both sorting after a training's (1_train, 2_val)
    visualdl = pytest.importorskip("visualdl")
    (records,) = (tmp_path / "results" / "vdl" / "whole").glob("vdlrecords.*.log")
    tags = visualdl.LogReader(file_path=str(records)).get_tags()
    sections = sorted({t.split("/")[0] for t in tags["scalar"]}, key=str.upper)  # as VisualDL orders them
    assert sections == ["3_search", "4_search_ops"]
    assert sorted(["1_train", "2_val"] + sections, key=str.upper)[:2] == ["1_train", "2_val"]
    assert "4_search_ops/dec00_GA" in tags["scalar"] and "3_search/epoch_weight_loss" in tags["scalar"]
    assert tags["image"] == ["3_search/probabilities"]

    # the epoch file is an --ARCH_PATH: read back, trained by the normal engine
    arch_path = str(tmp_path / "results" / "search" / "whole" / "epoch3.json")
    genotype = read_genotype(arch_path)
    assert genotype == reports["whole"]["genotype"]
    code = cli_main(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={arch_path}", f"--DATA_ROOT={synthetic_root}",
                     "--SPLIT=train", "--EVAL_EE=False", "--MAX_EPOCH=1", "--BS=8", "--VERSION=found",
                     f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"])
    assert code == 0
    cfg = copy.deepcopy(load_config("tiny").model)
    cfg.enc, cfg.dec = genotype["enc"], genotype["dec"]
    trained = safe_load(str(tmp_path / "ckpt" / "ckpt_found" / "epoch1.pdparams"))
    model = MMNasNet(cfg, trained["embedding.weight"].shape[0], trained["proj.weight"].shape[1])
    load_weights(model, str(tmp_path / "ckpt" / "ckpt_found" / "epoch1.pdparams"))


def test_published_genotype_file_is_an_arch_path():
    genotype = read_genotype(os.path.join(CONFIGS, "genotypes", "mmnasnet_vqa.json"))
    assert len(genotype["enc"]) == 12 and len(genotype["dec"]) == 18


def test_two_process_search_equals_one_process(tmp_path, synthetic_root):
    """Same paths on both processes, weight gradients averaged, alpha gradients summed by hand:
    without dropout, two processes with half batches take the one-process steps."""
    import subprocess
    import sys
    yml = tmp_path / "dp.yml"
    # a smaller LR than the tiny search's: with warmup_epochs 0 (no warm-up) the float rounding of
    # two half batches vs one batch otherwise grows past the tolerance within two epochs
    yml.write_text(f"base: {search_yaml(tmp_path)}\nmodel: {{dropout: 0.0}}\ntrain: {{lr_base: 2.5e-4}}\n")
    common = [f"--MODEL={yml}", f"--DATA_ROOT={synthetic_root}", "--MAX_EPOCH=2",
              f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"]
    assert cli_main(["--RUN=search", "--VERSION=one", *common]) == 0
    repo = os.path.dirname(CONFIGS)
    proc = subprocess.run([sys.executable, os.path.join(repo, "run.py"), "--RUN=search", "--VERSION=two",
                           "--NPROCS=2", *common], cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.load(open(tmp_path / "results" / "search" / v / "epoch2.json")) for v in ("one", "two"))
    assert one["arch_steps"] == two["arch_steps"] > 0
    for key in ("weight_loss", "arch_loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    for part in ("enc", "dec"):
        np.testing.assert_allclose(two["probabilities"][part], one["probabilities"][part], atol=1e-5)
    alphas = lambda v: {k: a for k, a in safe_load(str(tmp_path / "ckpt" / f"ckpt_{v}" / "epoch2.pdparams")).items()
                        if k.endswith(".alpha")}
    for key, value in alphas("one").items():
        np.testing.assert_allclose(alphas("two")[key], value, atol=1e-5, err_msg=key)
