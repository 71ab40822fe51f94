"""Search seams: an op added through the registry alone is searchable and trainable; SNAS
(gradients through the relaxed samples, temperature schedule, one batch for weights and
logits, exact resume); the FLOP budget (penalty gradient, exact fit, a search under a budget);
binary_gate unchanged against a reference recorded before the strategies were split out."""
import copy
import dataclasses
import itertools
import json
import os
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from mmnas.cli import main as cli_main
from mmnas.config import ConfigError, ModelConfig, SearchConfig, config_from_dict, load_config, read_genotype
from mmnas.checkpoint_files import safe_load
from mmnas.engine.search import epoch_report, heatmap_grid
from mmnas.models import MMNasNet
from mmnas.models.flops import forward_flops
from mmnas.models.supernet import MixedOp, SuperNet
from mmnas.ops.registry import op_names, register_op, unregister_op
from mmnas.search import StepAt, strategy_class, strategy_names
from mmnas.search.budget import (expected_gflops, fit_budget, genotype_gflops, position_costs,
                                 target_model_config)
from mmnas.search.snas import SNAS, sample_position, temperature
from mmnas.models.loss import answer_loss

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")
sys.path.insert(0, os.path.join(HERE, "reference"))
import binary_gate_search as reference  # noqa: E402
from test_search import random_batch  # noqa: E402


def tiny_model_cfg(**overrides):
    cfg = ModelConfig(hidden_size=16, heads=2, rel_head_width=8, rel_size=8, flat_mlp=16, flat_out=32,
                      word_embed=12)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def snas_run_cfg(model_cfg=None, **search):
    cfg = config_from_dict({"search": {"algorithm": "snas", "enc_positions": 2, "dec_positions": 3,
                                       "enc_ops": ["SA", "FFN", "skip"], "dec_ops": ["SA", "GA", "RSA", "FFN", "skip"],
                                       "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
                                       **search},
                            "train": {"grad_clip": 0, "lr_base": 1e-3}})
    cfg.model = model_cfg or tiny_model_cfg()
    return cfg


# ---- a toy op through the registry alone ------------------------------------------------------------

class Toy(nn.Layer):
    """x * w: one learned scale per channel (reads x only)."""

    def __init__(self, cfg):
        super().__init__()
        self.w = self.create_parameter([cfg.hidden_size], default_initializer=nn.initializer.Constant(0.5))

    def forward(self, x, y=None, x_mask=None, y_mask=None, relations=None):
        return x * self.w


def toy_flops(cfg, n, m):
    return 1.0 * n * cfg.hidden_size


@pytest.fixture
def toy_op():
    register_op("TOY", reads="x", parts=("enc", "dec"), flops=toy_flops)(Toy)
    yield "TOY"
    unregister_op("TOY")


def test_toy_op_registered_from_the_test_alone_is_searchable_and_trainable(toy_op):
    assert toy_op in op_names("enc") and toy_op in op_names("dec", search=True)
    # config validation: genotypes and search pools accept it
    model_cfg = tiny_model_cfg(enc=["SA", "TOY"], dec=["TOY", "GA"], dropout=0.0)
    model_cfg.validate()
    cfg = snas_run_cfg(model_cfg, enc_ops=["SA", "TOY"], dec_ops=["GA", "TOY", "skip"])
    # the supernet pools hold it, the SNAS step gives its logit a gradient and a step
    paddle.seed(0)
    net = SuperNet(model_cfg, cfg.search, token_size=40, answer_size=6)
    assert all(isinstance(m.candidates[m.ops.index("TOY")], Toy) for m in net.mixed_ops())
    strategy = SNAS(net, cfg, position_costs(model_cfg, {p: cfg.search.pools(p) for p in ("enc", "dec")}))
    weight_opt, arch_opt = strategy.build_optimizers(1e-3)
    before = [m.alpha.numpy().copy() for m in net.mixed_ops()]
    strategy.train_step(net, weight_opt, arch_opt, random_batch(np.random.default_rng(0)), 1e-3,
                        np.random.default_rng(1), StepAt(0, 0, 1, 1), None)
    for m, old in zip(net.mixed_ops(), before):
        assert m.alpha.numpy()[m.ops.index("TOY")] != old[m.ops.index("TOY")]
    # heat map and epoch report: a column of its own, probabilities that sum to one with the others
    report = epoch_report(strategy, cfg, 1, 1, {})
    ops, labels, grid = heatmap_grid(report)
    assert ops == [op for op in op_names(search=True) if op in ("SA", "GA", "TOY", "skip")] and "TOY" in ops
    np.testing.assert_allclose(np.nansum(grid, 1), 1.0, atol=1e-5)
    assert not np.isnan(grid[:, ops.index("TOY")]).any()
    # FLOP counts read its declaration
    with_toy = forward_flops(model_cfg, 10)["other"]
    without = copy.deepcopy(model_cfg)
    without.enc, without.dec = ["SA"], ["GA"]
    assert with_toy - forward_flops(without, 10)["other"] == toy_flops(model_cfg, 14, 10) + toy_flops(model_cfg, 10, 14)
    # a genotype using it builds as an MMNasNet and trains a step: its weights move
    paddle.seed(1)
    model = MMNasNet(model_cfg, 40, 6)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())
    feats, boxes, ids, scores = random_batch(np.random.default_rng(2))
    loss = answer_loss(model(feats, None, boxes, ids), scores)
    loss.backward()
    optimizer.step()
    assert np.isfinite(float(loss))
    assert not np.allclose(model.backbone.enc_list[1].w.numpy(), 0.5)
    assert not np.allclose(model.backbone.dec_list[0].w.numpy(), 0.5)


def test_without_registration_the_toy_op_is_refused():
    assert "TOY" not in op_names(search=True)
    with pytest.raises(ConfigError, match="is 'TOY'; expected .* each one of SA, FFN"):
        tiny_model_cfg(enc=["TOY"]).validate()
    with pytest.raises(ConfigError, match="position 0"):
        SearchConfig(enc_ops=["SA", "TOY"]).validate()
    with pytest.raises(ValueError, match="parts"):
        register_op("BAD", reads="x", parts=("middle",), flops=toy_flops)(Toy)
    with pytest.raises(ConfigError, match="search.algorithm"):
        strategy_class("darts")
    assert {"binary_gate", "snas"} <= set(strategy_names())


# ---- SNAS --------------------------------------------------------------------------------------------

def test_snas_hard_sample_gradient_reaches_the_logits_through_z():
    """Only the sampled op runs; dL/dalpha_i = <dL/dout, o_a> * y_a (delta_ai - y_i) / tau."""
    paddle.seed(0)
    op = MixedOp(["SA", "FFN", "skip"], tiny_model_cfg(), alpha_init_std=0.5)
    op.eval()
    rng = np.random.default_rng(3)
    x = paddle.to_tensor(rng.standard_normal((2, 5, 16)).astype("float32"))
    mask = paddle.zeros([2, 1, 1, 5], dtype="bool")
    w = rng.standard_normal((2, 5, 16)).astype("float32")
    noise, tau = rng.gumbel(size=3), 0.7
    sample_position(op, noise, tau, hard=True)
    a = op.active
    out = op(x, None, mask)
    expected_out = op.candidates[a](x, None, mask).numpy()
    np.testing.assert_allclose(out.numpy(), expected_out, atol=1e-6)  # the value is the sampled op's
    (out * paddle.to_tensor(w)).sum().backward()
    alpha = op.alpha.numpy().astype(np.float64)
    y = np.exp((alpha + noise) / tau) / np.exp((alpha + noise) / tau).sum()
    assert a == int(np.argmax(alpha + noise))
    g_a = float((w * expected_out).sum())
    analytic = g_a * y[a] * ((np.arange(3) == a) - y) / tau
    assert np.abs(op.alpha.grad.numpy()).min() > 0
    np.testing.assert_allclose(op.alpha.grad.numpy(), analytic, rtol=1e-4, atol=1e-6)
    for j, cand in enumerate(op.candidates):  # the others were not run: no weight gradients
        assert all((q.grad is not None) == (j == a) for q in cand.parameters())


def test_snas_soft_sample_gradient_matches_finite_differences():
    paddle.seed(0)
    op = MixedOp(["SA", "FFN", "skip"], tiny_model_cfg(), alpha_init_std=0.5)
    op.eval()
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.standard_normal((2, 5, 16)).astype("float32"))
    mask = paddle.zeros([2, 1, 1, 5], dtype="bool")
    w = paddle.to_tensor(rng.standard_normal((2, 5, 16)).astype("float32"))
    noise, tau = rng.gumbel(size=3), 0.8

    def loss():
        sample_position(op, noise, tau, hard=False)
        return (op(x, None, mask) * w).sum()
    loss().backward()
    grad = op.alpha.grad.numpy().copy()
    alpha0, eps, fd = op.alpha.numpy().copy(), 1e-2, np.zeros(3)
    with paddle.no_grad():
        for i in range(3):
            for sign in (1, -1):
                shifted = alpha0.copy()
                shifted[i] += sign * eps
                op.alpha.set_value(shifted)
                fd[i] += sign * float(loss()) / (2 * eps)
    assert np.abs(grad).min() > 0
    np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=1e-3)


def test_temperature_schedules():
    assert temperature(1.0, 0.1, "constant", 0.7) == 1.0
    assert temperature(1.0, 0.2, "linear", 0.5) == pytest.approx(0.6)
    assert temperature(1.0, 0.25, "exponential", 0.5) == pytest.approx(0.5)
    assert temperature(1.0, 0.2, "cosine", 0.0) == pytest.approx(1.0)
    assert temperature(1.0, 0.2, "cosine", 0.5) == pytest.approx(0.6)
    assert StepAt(epoch=1, step=2, steps=4, epochs=3).progress == pytest.approx(6 / 12)
    with pytest.raises(ConfigError, match="tau_anneal"):
        config_from_dict({"search": {"tau_anneal": "sqrt"}})


def test_snas_steps_weights_and_logits_on_the_same_batch():
    """One forward on the one batch; then the first Adam step of each optimizer moves every
    parameter by -lr * sign(its gradient on that batch at the pre-step point)."""
    cfg = snas_run_cfg(tiny_model_cfg(dropout=0.0))
    paddle.seed(0)
    net = SuperNet(cfg.model, cfg.search, token_size=40, answer_size=6)
    strategy = SNAS(net, cfg)
    lr_w = 1e-3
    weight_opt, arch_opt = strategy.build_optimizers(lr_w)
    batch = random_batch(np.random.default_rng(5))
    at = StepAt(0, 0, 2, 1)

    # the gradients of this batch, with the noise the step will draw
    rng = np.random.default_rng(6)
    strategy.sample([rng.gumbel(size=len(m.ops)) for m in net.mixed_ops()], strategy.temperature(at))
    feats, boxes, ids, scores = batch
    answer_loss(net(feats, None, boxes, ids), scores).backward()
    grads = {p.name: p.grad.numpy().copy() for p in net.parameters() if p.grad is not None}
    alphas = {p.name: p.numpy().copy() for p in net.arch_parameters()}
    net.clear_gradients(set_to_zero=False)
    net.close_gates()
    before = {p.name: p.numpy().copy() for p in net.parameters()}

    calls = []
    hook = net.register_forward_pre_hook(lambda layer, inputs: calls.append(1))
    strategy.train_step(net, weight_opt, arch_opt, batch, lr_w, np.random.default_rng(6), at, None)
    hook.remove()
    assert len(calls) == 1
    moved_alpha = moved_weight = 0
    for p in net.parameters():
        delta = p.numpy() - before[p.name]
        if p.name not in grads:  # not on the sampled path: untouched
            assert not delta.any(), p.name
            continue
        g = grads[p.name]
        lr = cfg.search.arch_lr if p.name in alphas else lr_w
        if p.name in alphas:
            g = g + cfg.search.arch_weight_decay * alphas[p.name]  # L2 on the logits
        big = np.abs(g) > 1e-4
        np.testing.assert_allclose(delta[big], -lr * np.sign(g[big]), rtol=1e-3, err_msg=p.name)
        moved_alpha += p.name in alphas and big.any()
        moved_weight += p.name not in alphas and big.any()
    assert moved_alpha == len(alphas) and moved_weight > 10


# ---- the FLOP budget ---------------------------------------------------------------------------------

def budget_costs(enc=3, dec=3):
    pools = {"enc": [["SA", "FFN", "skip"]] * enc, "dec": [["SA", "GA", "RSA", "FFN", "skip"]] * dec}
    return position_costs(target_model_config("small"), pools)


def test_expected_flops_penalty_gradient_matches_finite_differences():
    costs = budget_costs()
    rng = np.random.default_rng(7)
    alphas = [paddle.to_tensor(rng.standard_normal(len(ops)).astype("float32"), stop_gradient=False)
              for _, _, ops, _ in costs.positions()]
    expected_gflops(alphas, costs).backward()
    eps = 1e-2
    for a in alphas:
        base = a.numpy().copy()
        fd = np.zeros_like(base)
        for i in range(len(base)):
            for sign in (1, -1):
                shifted = base.copy()
                shifted[i] += sign * eps
                a.set_value(shifted)
                with paddle.no_grad():
                    fd[i] += sign * float(expected_gflops(alphas, costs)) / (2 * eps)
            a.set_value(base)
        np.testing.assert_allclose(a.grad.numpy(), fd, rtol=2e-2, atol=2e-4)
    # E[C] itself: uniform logits give the mean cost per position
    uniform = [paddle.zeros([len(ops)]) for _, _, ops, _ in costs.positions()]
    mean = costs.fixed_gflops + sum(c.mean() for *_, c in costs.positions())
    assert float(expected_gflops(uniform, costs)) == pytest.approx(mean, rel=1e-6)


def test_fit_budget_is_the_most_probable_genotype_within_the_budget():
    costs = budget_costs()
    rng = np.random.default_rng(8)
    for trial in range(5):
        probs = {part: [rng.dirichlet(np.ones(len(ops))) for ops in costs.ops[part]] for part in ("enc", "dec")}
        argmax = fit_budget(probs, costs, None)
        top = costs.choice_gflops(argmax)
        assert fit_budget(probs, costs, top + 1e-6) == argmax  # fits: unchanged
        budget = costs.cheapest_gflops() + (top - costs.cheapest_gflops()) * rng.uniform(0.1, 0.9)
        chosen = fit_budget(probs, costs, budget)
        assert costs.choice_gflops(chosen) <= budget
        best, best_logp = None, -np.inf  # brute force over all 3^3 * 5^3 choices
        positions = list(costs.positions())
        for combo in itertools.product(*[range(len(ops)) for _, _, ops, _ in positions]):
            pick = {"enc": [], "dec": []}
            logp = 0.0
            for (part, j, ops, _), k in zip(positions, combo):
                pick[part].append(ops[k])
                logp += np.log(probs[part][j][k])
            if costs.choice_gflops(pick) <= budget and logp > best_logp:
                best, best_logp = pick, logp
        assert chosen == best, trial
    with pytest.raises(ConfigError, match="budget_gflops"):
        fit_budget(probs, costs, costs.cheapest_gflops() * 0.99)


def test_genotype_gflops_of_the_published_genotype():
    """MMNasNet-small with the published genotype: 5.75 GFLOPs forward at n = 100 (docs/search.md)."""
    published = read_genotype(os.path.join(CONFIGS, "genotypes", "mmnasnet_vqa.json"))
    assert genotype_gflops(load_config("small").model, published) == pytest.approx(5.75, abs=0.005)


# ---- search runs through the CLI --------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return reference.make_data(str(tmp_path_factory.mktemp("synth")))


def snas_yaml(tmp_path, extra=""):
    path = tmp_path / "snas_test.yml"
    path.write_text(
        f"base: {os.path.join(CONFIGS, 'search', 'search_vqa_snas_tiny.yml')}\n"
        "model: {hidden_size: 16, heads: 2, rel_head_width: 8, rel_size: 8, flat_mlp: 16, flat_out: 32, word_embed: 12}\n"
        "train: {batch_size: 8}\n"
        "search: {enc_positions: 2, dec_positions: 3, enc_ops: [SA, FFN, skip], dec_ops: [SA, GA, RSA, FFN, skip], "
        f"tau_start: 1.0, tau_end: 0.25, tau_anneal: exponential, tau_epochs: 3{extra}}}\n")
    return str(path)


def run_cli(tmp_path, *args):
    assert cli_main(["--RUN=search", f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}",
                     *args]) == 0


def test_snas_search_resumes_exactly_and_reports(tmp_path, synthetic_root):
    common = [f"--MODEL={snas_yaml(tmp_path)}", f"--DATA_ROOT={synthetic_root}"]
    run_cli(tmp_path, *common, "--VERSION=whole", "--MAX_EPOCH=3")
    run_cli(tmp_path, *common, "--VERSION=part", "--MAX_EPOCH=2")
    run_cli(tmp_path, *common, "--RESUME=True", "--CKPT_V=part", "--CKPT_E=2", "--MAX_EPOCH=3")
    ckpt = lambda version, ext: safe_load(str(tmp_path / "ckpt" / f"ckpt_{version}" / f"epoch3.{ext}"))
    whole, part = ckpt("whole", "pdparams"), ckpt("part", "pdparams")
    assert whole.keys() == part.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], part[key], err_msg=key)
    for name in ("optimizer", "arch_optimizer"):
        for key, value in ckpt("whole", "pdopt")[name].items():
            np.testing.assert_array_equal(value, ckpt("part", "pdopt")[name][key], err_msg=key)
    folder = tmp_path / "results" / "search"
    reports = [json.load(open(folder / "whole" / f"epoch{e}.json")) for e in (1, 2, 3)]
    resumed = json.load(open(folder / "part" / "epoch3.json"))
    for key in ("genotype", "probabilities", "weight_loss", "top_path_score", "gflops", "temperature"):
        assert reports[-1][key] == resumed[key], key
    # single level, every epoch: the logits moved in epoch 1 already; no separate arch steps
    assert reports[0]["algorithm"] == "snas" and reports[0]["phase"] == "search" and reports[0]["arch_steps"] == 0
    assert max(abs(p - 1 / len(ps)) for ps in reports[0]["probabilities"]["dec"] for p in ps) > 1e-3
    # the temperature of each epoch's last step follows the schedule; the genotype is the argmax
    steps = 48 // 8
    for e, report in enumerate(reports):
        assert report["temperature"] == pytest.approx(temperature(1.0, 0.25, "exponential", (e * steps + steps - 1) / (3 * steps)))
        assert report["top_ops"] == {part: [ops[int(np.argmax(p))] for ops, p in zip(report["ops"][part], report["probabilities"][part])]
                                     for part in ("enc", "dec")}
        assert report["gflops"] == pytest.approx(genotype_gflops(load_config("small").model, report["genotype"]), abs=1e-4)
    # resumed under a binary_gate config, the run takes the checkpoint's search settings
    # (engine/resume.py restores them) and ends exactly as the uninterrupted SNAS search
    code = cli_main(["--RUN=search", f"--MODEL={reference.search_yaml(str(tmp_path))}", f"--DATA_ROOT={synthetic_root}",
                     "--RESUME=True", "--CKPT_V=part", "--CKPT_E=2", "--MAX_EPOCH=3", "--VERSION=other",
                     f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"])
    assert code == 0
    other = json.load(open(folder / "other" / "epoch3.json"))
    assert other["algorithm"] == "snas" and other["probabilities"] == reports[-1]["probabilities"]


def budget_search(tmp_path, root, algorithm, flops_weight, version):
    """A 12 + 18 position search at hidden 16 under 70% of the published genotype's GFLOPs;
    returns (budget, the two epoch reports)."""
    published = read_genotype(os.path.join(CONFIGS, "genotypes", "mmnasnet_vqa.json"))
    budget = round(0.7 * genotype_gflops(load_config("small").model, published), 3)
    path = tmp_path / f"{version}.yml"
    base = "search_vqa_snas_tiny.yml" if algorithm == "snas" else "search_vqa_tiny.yml"
    path.write_text(
        f"base: {os.path.join(CONFIGS, 'search', base)}\n"
        "model: {hidden_size: 16, heads: 2, rel_head_width: 8, rel_size: 8, flat_mlp: 16, flat_out: 32, word_embed: 12}\n"
        "train: {batch_size: 8, warmup_epochs: 0}\n"
        f"search: {{warmup_epochs: 1, arch_every: 1, flops_weight: {flops_weight}, eval_top_path: false}}\n")
    run_cli(tmp_path, f"--MODEL={path}", f"--DATA_ROOT={root}", f"--VERSION={version}", "--MAX_EPOCH=2",
            f"--BUDGET_GFLOPS={budget}")  # the flag sets search.budget_gflops
    folder = tmp_path / "results" / "search" / version
    return budget, [json.load(open(folder / f"epoch{e}.json")) for e in (1, 2)]


@pytest.mark.parametrize("algorithm", ["snas", "binary_gate"])
def test_search_under_a_budget_below_the_published_genotype_fits_it(tmp_path, synthetic_root, algorithm, capsys):
    budget, reports = budget_search(tmp_path, synthetic_root, algorithm, 0.0, "b")
    console = capsys.readouterr().out
    for report in reports:
        assert report["budget_gflops"] == budget and report["gflops"] <= budget
        assert len(report["top_ops"]["enc"]) == 12 and len(report["top_ops"]["dec"]) == 18
        assert report["argmax_gflops"] > budget  # the unconstrained argmax did not fit: the fit chose
        assert report["gflops"] == pytest.approx(genotype_gflops(load_config("small").model, report["genotype"]),
                                                 abs=1e-4)
    assert read_genotype(str(tmp_path / "results" / "search" / "b" / "epoch2.json")) == reports[-1]["genotype"]
    # the console says the budget bound the genotype, with the numbers of the JSON (binary_gate:
    # not in its warm-up epoch, when no genotype is chosen)
    shown = reports[1:] if algorithm == "binary_gate" else reports
    for report in shown:
        assert (f"budget {budget:g} GFLOPs: argmax genotype {report['argmax_gflops']:.2f} -> fitted "
                f"{report['gflops']:.2f}") in console
    assert console.count("argmax genotype") == len(shown)
    # each strategy's JSON lists the shared settings and its own only
    own = {"snas": {"tau_start", "tau_end", "tau_anneal", "tau_epochs", "hard"},
           "binary_gate": {"warmup_epochs", "arch_every", "arch_mode"}}
    settings = set(reports[-1]["search"])
    assert own[algorithm] <= settings and not (set().union(*own.values()) - own[algorithm]) & settings
    assert {"budget_gflops", "weight_fraction", "enc_ops", "target_model"} <= settings
    assert {f.name for f in dataclasses.fields(SearchConfig)} - settings == set().union(*own.values()) - own[algorithm]


def test_flops_penalty_pulls_the_expected_flops_down(tmp_path, synthetic_root):
    _, free = budget_search(tmp_path, synthetic_root, "snas", 0.0, "free")
    budget, penalised = budget_search(tmp_path, synthetic_root, "snas", 0.5, "penalised")
    assert penalised[-1]["expected_gflops"] < free[-1]["expected_gflops"] - 0.1
    assert penalised[-1]["expected_gflops"] < penalised[0]["expected_gflops"]
    assert penalised[-1]["gflops"] <= budget


def test_budget_below_the_cheapest_genotype_is_refused(tmp_path, synthetic_root):
    code = cli_main(["--RUN=search", f"--MODEL={snas_yaml(tmp_path, ', budget_gflops: 0.01')}",
                     f"--DATA_ROOT={synthetic_root}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
                     f"--RESULTS_DIR={tmp_path / 'results'}", "--MAX_EPOCH=1"])
    assert code == 2


# ---- binary_gate: unchanged ------------------------------------------------------------------------

def test_binary_gate_reproduces_the_pre_refactor_reference(tmp_path, synthetic_root):
    """The numbers of tests/reference/binary_gate_search.json were recorded before the search
    strategies existed. Run as a fresh process on the recording machine (`python
    tests/reference/binary_gate_search.py`) the search is bit-identical, weights digest included.
    In-process here the GEMM kernels can differ (MKL settings depend on whether Paddle was
    imported before mmnas.runtime.configure), so alphas are compared to 1e-4: a changed sample,
    step or order moves an alpha by ~0.1 (lr 0.1, sign-like Adam steps)."""
    recorded = json.load(open(reference.REFERENCE))
    outcome = reference.run(str(tmp_path), synthetic_root)
    for key in ("genotype", "top_ops", "arch_steps"):
        assert outcome[key] == recorded[key], key
    for key in ("weight_loss", "arch_loss", "top_path_score"):
        assert outcome[key] == pytest.approx(recorded[key], rel=1e-4), key
    assert outcome["alphas"].keys() == recorded["alphas"].keys()
    for key, values in recorded["alphas"].items():
        np.testing.assert_allclose(outcome["alphas"][key], values, rtol=0, atol=1e-4, err_msg=key)


def test_two_process_snas_search_equals_one_process(tmp_path, synthetic_root):
    """Same Gumbel noise on both processes, weight gradients averaged by DataParallel, logit
    gradients averaged by hand, the FLOP penalty added once: without dropout, two processes with
    half batches take the one-process steps."""
    import subprocess
    yml = tmp_path / "dp.yml"
    yml.write_text(f"base: {snas_yaml(tmp_path, ', flops_weight: 0.1')}\nmodel: {{dropout: 0.0}}\n")
    common = [f"--MODEL={yml}", f"--DATA_ROOT={synthetic_root}", "--MAX_EPOCH=2",
              f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}"]
    assert cli_main(["--RUN=search", "--VERSION=one", *common]) == 0
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(CONFIGS), "run.py"), "--RUN=search",
                           "--VERSION=two", "--NPROCS=2", *common], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.load(open(tmp_path / "results" / "search" / v / "epoch2.json")) for v in ("one", "two"))
    assert two["weight_loss"] == pytest.approx(one["weight_loss"], abs=1e-5)
    assert two["genotype"] == one["genotype"]
    for part in ("enc", "dec"):
        np.testing.assert_allclose(two["probabilities"][part], one["probabilities"][part], atol=1e-5)


def test_a_third_strategy_is_one_class(tmp_path, synthetic_root):
    """A strategy declared in this test file alone (random search over paths, logits frozen)
    runs through the engine, chosen by search.algorithm."""
    from mmnas.search import SearchStrategy, register_strategy
    from mmnas.search.binary_gate import weight_step
    from mmnas.search.strategy import _STRATEGIES, Partition

    @register_strategy("paths_only")
    class PathsOnly(SearchStrategy):
        @classmethod
        def partition(cls, n, cfg):
            return Partition(np.arange(n), np.arange(0))

        def train_step(self, net, weight_opt, arch_opt, batch, lr, rng, at, arch_batches, world=1):
            loss, grad_norm = weight_step(net, self.model, weight_opt, batch, lr, self.cfg, rng, world)
            return {"weight_loss": loss, "grad_norm": grad_norm}
    try:
        run_cli(tmp_path, f"--MODEL={snas_yaml(tmp_path, ', algorithm: paths_only, eval_top_path: false')}",
                f"--DATA_ROOT={synthetic_root}", "--VERSION=p", "--MAX_EPOCH=1")
    finally:
        _STRATEGIES.pop("paths_only")
    report = json.load(open(tmp_path / "results" / "search" / "p" / "epoch1.json"))
    assert report["algorithm"] == "paths_only" and report["weight_loss"] > 0
    initial = load_config("search_snas_tiny").search.alpha_init_std
    assert max(abs(p - 1 / len(ps)) for ps in report["probabilities"]["dec"] for p in ps) < 10 * initial
