"""The architecture search (--RUN=search): the run around a search strategy.

The strategy (`search.algorithm`, mmnas/search/: binary_gate = MMnas's binary gates, snas =
SNAS) decides how the split is partitioned, how positions are sampled and mixed, and how the
weights and the architecture logits step; this module runs the epochs, the data, checkpoints
and reports.

After every epoch: checkpoint (supernet + both optimizers), and the top op per position (within
`search.budget_gflops` if set) with all probabilities and the genotype's GFLOPs in
`results/search/<VERSION>/epoch<N>.json` (+ a heat-map PNG), the log and VisualDL. The JSON is
a valid --ARCH_PATH for --RUN=train.

Determinism and resume follow train.py: data order, path samples (Gumbel noise for snas) and
dropout are all seeded from (seed, epoch), so a search resumed after epoch k replays epochs
k+1.. exactly. Data parallel: see each strategy's docstring.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..checkpoint_files import atomic_write
from ..config import RunConfig
from ..models.supernet import Searchable, genotype_from_choices
from ..ops.registry import op_names
from ..search import Partition, SearchStrategy, StepAt, strategy_class, strategy_settings
from ..search.budget import BUDGET_REGIONS, check_feasible, expected_gflops, genotype_gflops, position_costs, target_model_config
from .checkpoint import (TrainingError, check_epochs_left, ckpt_paths, materialize_optimizer_state, resume_from,
                         save_epoch)
from .evaluate import make_loader, write_json_atomic
from .interrupt import RunPosition
from .logger import RunLogger, vdl_tag
from .runner import epoch_seed, initial_word_vectors, open_dataset, open_vocab, run_epoch, run_logged, seed_epoch
from .schedule import base_learning_rate
from ..tasks import Task, task_of


# ---- one epoch ---------------------------------------------------------------------------------

def epoch_batches(strategy: SearchStrategy, parts: Partition, cfg: RunConfig, epoch: int, steps: int, rank: int,
                  world: int):
    """This process's weight batches and arch batches of `epoch` (lists of dataset indices)."""
    tcfg = cfg.train
    bs, per_rank = tcfg.batch_size, tcfg.batch_size // world
    mine = lambda batches: [b[rank * per_rank:(rank + 1) * per_rank].tolist() for b in batches]
    order = parts.weight[np.random.RandomState(epoch_seed(tcfg.seed, epoch)).permutation(len(parts.weight))]
    weight = mine(order[:steps * bs].reshape(steps, bs))
    n_arch = strategy.arch_batches_per_epoch(epoch, steps)
    arch_order = parts.arch[np.random.default_rng([tcfg.seed, epoch, 2]).permutation(len(parts.arch))]
    available = arch_order[:(len(arch_order) // bs) * bs].reshape(-1, bs)
    arch = mine([available[m % len(available)] for m in range(n_arch)])  # cycled if the part is small
    return weight, arch


def search_one_epoch(net, strategy: SearchStrategy, weight_opt, arch_opt, dataset, parts: Partition,
                     cfg: RunConfig, epoch: int, steps: int, lr_base: float, rank: int, world: int, logger: RunLogger,
                     progress: bool, position: RunPosition):
    """One epoch of search steps (runner.run_epoch, the epoch loop of training); the strategy
    takes each step."""
    tcfg = cfg.train
    seed_epoch(tcfg.seed, epoch)
    rng = np.random.default_rng([tcfg.seed, epoch, 1])  # the sampled paths of this epoch
    weight_batches, arch_batches = epoch_batches(strategy, parts, cfg, epoch, steps, rank, world)
    arch_iter = iter(make_loader(dataset, arch_batches, cfg.data.num_workers)) if arch_batches else None

    def step(step_in_epoch, batch, lr):
        return strategy.train_step(net, weight_opt, arch_opt, batch, lr, rng,
                                   StepAt(epoch, step_in_epoch, steps, tcfg.max_epoch), arch_iter, world)

    net.train()
    return run_epoch(cfg, epoch, weight_batches, dataset, step, len(parts.weight), lr_base, rank, world, logger,
                     progress, position, tag="search",
                     desc=f"search epoch {epoch + 1}/{tcfg.max_epoch} ({strategy.phase(epoch)})")


def score_top_path(model: Searchable, choices, dataset, indices: np.ndarray, batch_size: int, num_workers: int,
                   cfg: RunConfig, task: Task):
    """(mean loss, mean search score) of the path `choices` on `indices`; the score is the
    task's quick quality proxy (Task.search_score; answers: the training target of the argmax
    answer, a VQA-accuracy proxy)."""
    model.set_path(choices)
    batches = [indices[i:i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    loss_sum, score_sum = 0.0, 0.0
    model.eval()
    try:
        with paddle.no_grad():
            for loaded in make_loader(dataset, batches, num_workers):
                batch = task.as_batch(loaded)
                outputs = task.forward(model, batch)
                loss_sum += float(task.summed(task.loss(outputs, batch, cfg)["loss"], batch))
                score_sum += task.search_score(outputs, batch)
    finally:
        model.train()
    n = max(len(indices), 1)
    return loss_sum / n, score_sum / n


# ---- reporting ---------------------------------------------------------------------------------

def epoch_report(strategy: SearchStrategy, cfg: RunConfig, epoch: int, steps: int, stats: Dict[str, float]) -> dict:
    """The epoch<N>.json content: a valid --ARCH_PATH file plus everything the search knows.
    `gflops`: forward GFLOPs per sample at n = 100 of the genotype at search.target_model's width."""
    model, scfg = strategy.model, cfg.search
    choices = strategy.choices()
    genotype = genotype_from_choices(choices)
    with paddle.no_grad():
        expected = float(expected_gflops(model.arch_parameters(), strategy.costs))
    budget = {"gflops": round(genotype_gflops(strategy.costs.target, genotype, strategy.costs.head_flops), 4),
              "expected_gflops": round(expected, 4),  # E[GFLOPs] of a path sampled from the logits
              "target_model": scfg.target_model, "budget_gflops": scfg.budget_gflops}
    argmax = model.top_choices()
    if argmax != choices:  # the budget changed the genotype: say what the argmax was
        budget["argmax_ops"] = argmax
        budget["argmax_gflops"] = round(genotype_gflops(strategy.costs.target, genotype_from_choices(argmax),
                                                        strategy.costs.head_flops), 4)
    last_step = StepAt(epoch - 1, steps - 1, steps, cfg.train.max_epoch)
    return {
        "version": cfg.version,
        "epoch": epoch,
        "algorithm": scfg.algorithm,
        "phase": strategy.phase(epoch - 1),
        "genotype": genotype,
        **budget,
        "top_ops": choices,  # per position, skip included
        "ops": {part: [m.ops for m in model.mixed_ops(part)] for part in ("enc", "dec")},
        "probabilities": {part: [[round(p, 6) for p in probs] for probs in per_position]
                          for part, per_position in model.probabilities().items()},
        **stats,
        **strategy.report(last_step),
        "hidden_size": cfg.model.hidden_size,
        "search": strategy_settings(scfg.algorithm, cfg.to_dict()["search"]),  # shared + this strategy's
    }


def format_report(report: dict) -> str:
    lines = [f"genotype enc: {' '.join(report['genotype']['enc'])}",
             f"genotype dec: {' '.join(report['genotype']['dec'])}"]
    for part in ("enc", "dec"):
        for i, (ops, probs) in enumerate(zip(report["ops"][part], report["probabilities"][part])):
            lines.append(f"  p({part}{i:02d}) " + " ".join(f"{op} {100 * p:.1f}%" for op, p in zip(ops, probs)))
    return "\n".join(lines)


def console_architecture(report: dict, arch_start: int, target_model: str) -> str:
    """The lines under a search epoch's console line: during the warm-up (epochs 1..arch_start)
    only when the architecture starts to move; after it, the genotype, its GFLOPs and, under a
    FLOP budget, whether the budget changed it."""
    if report["epoch"] <= arch_start:
        return (f"  architecture frozen until epoch {arch_start + 1} (warm-up): weight steps only, "
                f"no genotype chosen yet")
    lines = [f"  enc: {' '.join(report['genotype']['enc'])}", f"  dec: {' '.join(report['genotype']['dec'])}",
             f"  {report['gflops']:.2f} GFLOPs per sample at n = 100 at the width of {target_model}"]
    budget = report["budget_gflops"]
    if budget is not None and "argmax_gflops" in report:
        lines.append(f"  budget {budget:g} GFLOPs: argmax genotype {report['argmax_gflops']:.2f} -> "
                     f"fitted {report['gflops']:.2f} (the most probable genotype within the budget)")
    elif budget is not None:
        lines.append(f"  budget {budget:g} GFLOPs: the argmax genotype fits ({report['gflops']:.2f})")
    return "\n".join(lines)


def heatmap_grid(report: dict):
    """(op names in registry order, position labels, probabilities [positions, ops] with NaN
    where a position does not hold the op): the heat map's content."""
    all_ops = [op for op in op_names(search=True)
               if any(op in ops for part in ("enc", "dec") for ops in report["ops"][part])]
    rows, labels = [], []
    for part in ("enc", "dec"):
        for i, (ops, probs) in enumerate(zip(report["ops"][part], report["probabilities"][part])):
            rows.append([probs[ops.index(op)] if op in ops else np.nan for op in all_ops])
            labels.append(f"{part}{i:02d}")
    return all_ops, labels, np.array(rows, dtype=np.float64)  # [positions, ops]


def heatmap(report: dict) -> Optional[np.ndarray]:
    """positions x ops probability heat map as an RGB uint8 array [H, W, 3] (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    all_ops, labels, grid = heatmap_grid(report)
    fig, ax = plt.subplots(figsize=(1.1 * len(all_ops) + 2.0, 0.22 * len(labels) + 1.2), dpi=80)
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(all_ops)), all_ops)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(f"epoch {report['epoch']}: p(op) per position", fontsize=9)
    for r, c in zip(*np.nonzero(~np.isnan(grid))):
        ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center", fontsize=6,
                color="black" if grid[r, c] > 0.6 else "white")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def publish_report(report: dict, results_dir: str, version: str, logger: RunLogger) -> str:
    """Write epoch<N>.json (+ .png), log it, send probabilities and the heat map to VisualDL."""
    folder = os.path.join(results_dir, "search", version)
    path = os.path.join(folder, f"epoch{report['epoch']}.json")
    write_json_atomic(report, path)
    logger.text(f"epoch {report['epoch']} architecture ({path}):\n{format_report(report)}")
    scalars = {}
    for part in ("enc", "dec"):
        for i, (ops, probs) in enumerate(zip(report["ops"][part], report["probabilities"][part])):
            scalars.update({vdl_tag("search_ops", f"{part}{i:02d}_{op}"): p for op, p in zip(ops, probs)})
    logger.scalars(scalars, report["epoch"])
    image = heatmap(report)
    if image is not None:
        _save_png(image, os.path.join(folder, f"epoch{report['epoch']}.png"))
        logger.image(vdl_tag("search", "probabilities"), image, report["epoch"])
    return path


def _save_png(image: np.ndarray, path: str) -> None:
    import matplotlib.pyplot as plt
    atomic_write(path, lambda f: plt.imsave(f, image, format="png"), "--RESULTS_DIR")


# ---- the whole search --------------------------------------------------------------------------

def search(cfg: RunConfig, rank: int = 0, world: int = 1, progress: Optional[bool] = None) -> dict:
    """Search per cfg; returns a summary (per-epoch reports, last checkpoint, last genotype file)."""
    cfg.search.validate()
    strategy_class(cfg.search.algorithm)  # an unknown algorithm stops here, before any process starts
    return run_logged(_search, cfg, rank, world, progress, "search")


def _search(cfg: RunConfig, rank: int, world: int, progress: bool, logger: RunLogger, position: RunPosition) -> dict:
    tcfg, dcfg, scfg = cfg.train, cfg.data, cfg.search
    start_epoch = cfg.ckpt_epoch if cfg.resume else 0
    check_epochs_left(start_epoch, tcfg.max_epoch, "search")  # before any data is read
    vocab = open_vocab(cfg, progress)
    dataset = open_dataset(cfg, dcfg.split, vocab, progress)
    strategy_type = strategy_class(scfg.algorithm)
    task = task_of(cfg)
    target = target_model_config(scfg.target_model)
    head = task.head_flops(target, dcfg.dataset, BUDGET_REGIONS, target.max_token)
    costs = position_costs(target, {p: scfg.pools(p) for p in ("enc", "dec")}, head)
    if scfg.budget_gflops is not None:
        check_feasible(scfg.budget_gflops, costs)
    parts = strategy_type.partition(len(dataset), cfg)
    steps = len(parts.weight) // tcfg.batch_size
    if steps == 0 or (strategy_type.needs_arch_part and len(parts.arch) < tcfg.batch_size):
        raise TrainingError(f"the {dcfg.split} split has {len(dataset)} {task.sample_noun}: {len(parts.weight)} for weight "
                            f"steps and {len(parts.arch)} for architecture steps, and each part needs at least "
                            f"one batch of --BS={tcfg.batch_size}.")
    split_info = {"size": len(dataset), "weight": len(parts.weight), "arch": len(parts.arch),
                  "seed": scfg.split_seed, "split": dcfg.split}

    paddle.seed(tcfg.seed)
    model = task.build_supernet(cfg.model, scfg, vocab, initial_word_vectors(cfg, vocab))
    lr_base = base_learning_rate(tcfg, dcfg.split)
    strategy = strategy_type(model, cfg, costs, task)
    weight_opt, arch_opt = strategy.build_optimizers(lr_base)
    optimizers = {"optimizer": weight_opt, "arch_optimizer": arch_opt}
    if cfg.resume:
        # searches saved before there were strategies were binary-gate searches
        params_path = resume_from(cfg, model, optimizers, steps,
                                  same={"algorithm": (scfg.algorithm, "binary_gate"), "split": (split_info, None)})
        if rank == 0:
            print(f"resumed search from {params_path} (epoch {start_epoch} done)")
    materialize_optimizer_state(weight_opt, model.weight_parameters())
    materialize_optimizer_state(arch_opt, model.arch_parameters())

    net = paddle.DataParallel(model, find_unused_parameters=True) if world > 1 else model
    if rank == 0:
        logger.config(cfg.to_dict())
        logger.text(f"search on {dcfg.split}: {len(parts.weight)} {task.sample_noun} for weight steps, {len(parts.arch)} "
                    f"for architecture steps, {steps} steps/epoch, {world} process(es), hidden size "
                    f"{cfg.model.hidden_size}, {len(model.mixed_ops('enc'))} encoder + "
                    f"{len(model.mixed_ops('dec'))} decoder positions")
        arch_start = strategy.arch_start_epoch()
        warmup = "epoch 1" if arch_start == 1 else f"epochs 1-{arch_start}"
        moves = (f"architecture steps from epoch {arch_start + 1} ({warmup}: warm-up, weight steps only)"
                 if arch_start else "architecture steps from the first step (no warm-up)")
        if scfg.budget_gflops is not None:
            moves += f"; reported genotypes fit {scfg.budget_gflops:g} GFLOPs at the width of {scfg.target_model}"
        print(moves)
        logger.text(moves)
    history, last_json = [], None
    for epoch in range(start_epoch, tcfg.max_epoch):
        position.epoch, position.step, position.phase = epoch, 0, ""
        task.before_epoch(model, dataset, cfg, epoch, rank, world, progress)
        stats = search_one_epoch(net, strategy, weight_opt, arch_opt, dataset, parts, cfg, epoch, steps,
                                 lr_base, rank, world, logger, progress, position)
        position.phase = "after its last step"
        per_rank = tcfg.batch_size // world
        weight_loss, arch_loss = stats.mean("weight_loss", per_rank, world), stats.mean("arch_loss", per_rank, world)
        arch_steps = stats.loss_steps.get("arch_loss", 0)
        if rank == 0:
            summary = {"weight_loss": weight_loss, "arch_loss": arch_loss, "arch_steps": arch_steps,
                       "lr": stats.lr, "seconds": round(stats.seconds, 2)}
            if scfg.eval_top_path:
                position.phase = "scoring the top path"
                summary["top_path_loss"], summary["top_path_score"] = score_top_path(
                    model, strategy.choices(), dataset, parts.arch, tcfg.eval_batch_size, dcfg.num_workers, cfg, task)
            params_path = save_epoch(cfg, epoch + 1, model, optimizers,
                                     {"split": split_info, "algorithm": scfg.algorithm, "steps_per_epoch": steps,
                                      "lr_base": lr_base, "lr": stats.lr, "processes": world}, position)
            report = epoch_report(strategy, cfg, epoch + 1, steps, {**summary, "checkpoint": params_path})
            last_json = publish_report(report, cfg.results_dir, cfg.version, logger)
            arch_text = f", arch loss {arch_loss:.5f} ({arch_steps} steps)" if arch_loss is not None else ""
            score_text = (f", top path score {100 * summary['top_path_score']:.2f}%" if scfg.eval_top_path else "")
            line = (f"search epoch {epoch + 1}/{tcfg.max_epoch}: weight loss {weight_loss:.5f}{arch_text}"
                    f"{score_text}, lr {stats.lr:.3e}, {stats.seconds:.1f}s, saved {params_path}, {last_json}")
            print(line)
            print(console_architecture(report, strategy.arch_start_epoch(), scfg.target_model))
            logger.text(line)
            logger.scalars({vdl_tag("search", f"epoch_{k}"): v for k, v in summary.items() if isinstance(v, float)},
                           epoch + 1)
            history.append(report)
        if world > 1:
            dist.barrier()
    last = position.last_ckpt
    return {"history": history, "last_checkpoint": ckpt_paths(cfg.ckpt_dir, *last)[0] if last else None,
            "genotype_path": last_json, "version": cfg.version}
