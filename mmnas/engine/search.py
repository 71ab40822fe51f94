"""The architecture search (--RUN=search): binary-gate NAS on the supernet, as MMnas does it.

The training split is partitioned once (seeded) into a weight part (80%) and an arch part.
Every step samples one path per position from softmax(alpha) and trains only that path's
weights on a weight-part batch (Adam, the train section's recipe). After `warmup_epochs`
epochs, every `arch_every`-th weight step is followed by an architecture step on an arch-part
batch: a newly sampled path runs with binary gates, the gate gradients give d loss / d alpha
(see MixedOp.alpha_grad) and alpha takes a step of its own Adam. Weights never move in an
architecture step, alpha never moves in a weight step.

After every epoch: checkpoint (supernet + both optimizers), and the top op per position with
all probabilities in `results/search/<VERSION>/epoch<N>.json` (+ a heat-map PNG), the log and
VisualDL. The JSON is a valid --ARCH_PATH for --RUN=train.

Determinism and resume follow train.py: data order, path samples and dropout are all seeded
from (seed, epoch), so a search resumed after epoch k replays epochs k+1.. exactly.

Data parallel: all processes draw the same paths (same seeds) and each takes its slice of the
global batch. Weight gradients are averaged by DataParallel (loss scaled by the world size,
as in train.py). Arch steps run with gradient sync off; the gate-derived alpha gradients are
summed over processes by hand, so every process takes the same alpha step.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F
from tqdm import tqdm

from ..config import RunConfig
from ..models.supernet import SuperNet
from ..runtime import clip_grad_norm_
from .checkpoint import atomic_save, load_weights, safe_load, to_numpy_state
from .evaluate import make_loader, write_json_atomic
from .logger import RunLogger
from .schedule import base_learning_rate, learning_rate
from .train import (TrainingError, checkpoint_to_resume, ckpt_paths, epoch_seed, initial_word_vectors,
                    open_dataset, open_vocab, optimizer_state_to_load, optimizer_state_to_save, report_interrupt,
                    run_logged, _all_reduce_sum)


@dataclass
class Partition:
    weight: np.ndarray  # dataset indices for weight steps
    arch: np.ndarray  # dataset indices for architecture steps


def partition_split(n: int, weight_fraction: float, seed: int) -> Partition:
    """Seeded partition of the n questions into the weight part and the arch part."""
    order = np.random.RandomState(seed).permutation(n)
    cut = int(round(n * weight_fraction))
    return Partition(np.sort(order[:cut]), np.sort(order[cut:]))


def materialize_optimizer_state(optimizer, params) -> None:
    """Create Adam's moments for every parameter now, not at its first step.

    Paddle creates them lazily, for parameters that have a gradient. A search steps only the
    sampled candidates, so without this the saved state misses never-sampled ones, and after
    a resume Paddle refuses to create them ("should in state dict"). Called after loading a
    state, it also moves every loaded entry into place, so the next save is complete again."""
    block = paddle.static.default_main_program().global_block()
    optimizer._create_accumulators(block, [p for p in params if not p.stop_gradient])


def build_optimizers(model: SuperNet, cfg: RunConfig, lr_base: float):
    tcfg, scfg = cfg.train, cfg.search
    weights = paddle.optimizer.Adam(learning_rate=lr_base, beta1=tcfg.betas[0], beta2=tcfg.betas[1],
                                    epsilon=tcfg.eps, parameters=model.weight_parameters())
    arch = paddle.optimizer.Adam(learning_rate=scfg.arch_lr, beta1=scfg.arch_betas[0], beta2=scfg.arch_betas[1],
                                 epsilon=scfg.arch_eps, parameters=model.arch_parameters())
    return weights, arch


def _bce(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def _sub_batches(batch, accu: int):
    region_feats, boxes, question_ids, answer_scores = batch[:4]
    sub = question_ids.shape[0] // accu
    for a in range(accu):
        part = slice(a * sub, (a + 1) * sub)
        yield a == accu - 1, (region_feats[part], boxes[part], question_ids[part], answer_scores[part])


def _check_finite(loss: float, what: str, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite {what} loss ({loss}) at epoch {epoch + 1}, step {step + 1}; "
                            f"nothing was saved for this epoch")


# ---- the two kinds of step -------------------------------------------------------------------

def weight_step(net, model: SuperNet, optimizer, batch, lr: float, cfg: RunConfig,
                rng: np.random.Generator, world: int = 1):
    """Sample a path, train only its weights on `batch`; returns (summed loss, grad norm)."""
    model.sample_path(rng)
    optimizer.set_lr(lr)
    loss_sum = 0.0
    for last, (region_feats, boxes, question_ids, answer_scores) in _sub_batches(batch, cfg.train.accu):
        sync = net.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
        with sync:
            loss = _bce(net(region_feats, None, boxes, question_ids), answer_scores)
            (loss * world).backward()  # DataParallel averages: x world gives the global sum
        loss_sum += float(loss)
    # DataParallel zero-fills the gradients of unused candidates; drop them so Adam skips them
    for p in model.inactive_parameters():
        p.clear_gradient(False)
    params = [p for p in model.weight_parameters() if p.grad is not None]
    grad_norm = clip_grad_norm_(params, cfg.train.grad_clip)
    optimizer.step()
    optimizer.clear_grad(set_to_zero=False)  # None, not zero: a zero grad would still move Adam
    return loss_sum, float(grad_norm)


def arch_step(net, model: SuperNet, arch_optimizer, weight_optimizer, batch, cfg: RunConfig,
              rng: np.random.Generator, world: int = 1) -> float:
    """Sample a gated path, estimate d loss / d alpha from the gates, step alpha only;
    returns the summed loss of the sampled path on `batch`."""
    mode = cfg.search.arch_mode
    model.sample_path(rng, mode)
    loss_sum = 0.0
    sync = net.no_sync() if world > 1 else contextlib.nullcontext()  # alpha grads reduced below
    with sync:
        for _, (region_feats, boxes, question_ids, answer_scores) in _sub_batches(batch, cfg.train.accu):
            loss = _bce(net(region_feats, None, boxes, question_ids), answer_scores)
            loss.backward()
            loss_sum += float(loss)
    grads = model.alpha_grads()  # per position, numpy
    if world > 1:
        flat = _all_reduce_array(np.concatenate(grads))
        grads = np.split(flat, np.cumsum([len(g) for g in grads])[:-1])
    weight_optimizer.clear_grad(set_to_zero=False)  # the path's weight gradients are not used
    alphas = model.arch_parameters()
    old = [a.numpy().copy() for a in alphas]
    # alpha.grad := grads, through the gradient of sum_i alpha_i * grad_i
    surrogate = paddle.add_n([(a * paddle.to_tensor(g.astype("float32"))).sum() for a, g in zip(alphas, grads)])
    surrogate.backward()
    arch_optimizer.step()
    arch_optimizer.clear_grad(set_to_zero=False)
    if mode == "two":  # keep the total probability of the two involved ops (ProxylessNAS)
        for m, before in zip(model.mixed_ops(), old):
            idx = m.involved
            after = m.alpha.numpy().astype(np.float64)
            offset = np.log(np.exp(after[idx]).sum() / np.exp(before[idx].astype(np.float64)).sum())
            after[idx] -= offset
            m.alpha.set_value(after.astype("float32"))
    model.close_gates()
    return loss_sum


def _all_reduce_array(values: np.ndarray) -> np.ndarray:
    t = paddle.to_tensor(values.astype("float64"))
    dist.all_reduce(t)
    return t.numpy()


# ---- one epoch ---------------------------------------------------------------------------------

@dataclass
class EpochStats:
    weight_loss: float  # summed over this process's weight-step samples
    weight_samples: int
    arch_loss: float
    arch_samples: int
    arch_steps: int
    seconds: float
    lr: float


def epoch_batches(parts: Partition, cfg: RunConfig, epoch: int, steps: int, rank: int, world: int):
    """This process's weight batches and arch batches of `epoch` (lists of dataset indices)."""
    tcfg, scfg = cfg.train, cfg.search
    bs, per_rank = tcfg.batch_size, tcfg.batch_size // world
    mine = lambda batches: [b[rank * per_rank:(rank + 1) * per_rank].tolist() for b in batches]
    order = parts.weight[np.random.RandomState(epoch_seed(tcfg.seed, epoch)).permutation(len(parts.weight))]
    weight = mine(order[:steps * bs].reshape(steps, bs))
    n_arch = steps // scfg.arch_every if epoch >= scfg.warmup_epochs else 0
    arch_order = parts.arch[np.random.default_rng([tcfg.seed, epoch, 2]).permutation(len(parts.arch))]
    available = arch_order[:(len(arch_order) // bs) * bs].reshape(-1, bs)
    arch = mine([available[m % len(available)] for m in range(n_arch)])  # cycled if the part is small
    return weight, arch


def search_one_epoch(net, model: SuperNet, weight_opt, arch_opt, dataset, parts: Partition, cfg: RunConfig,
                     epoch: int, steps: int, lr_base: float, rank: int, world: int, logger: RunLogger,
                     progress: bool) -> EpochStats:
    tcfg, scfg = cfg.train, cfg.search
    paddle.seed(epoch_seed(tcfg.seed, epoch))  # dropout masks of this epoch
    rng = np.random.default_rng([tcfg.seed, epoch, 1])  # the sampled paths of this epoch
    weight_batches, arch_batches = epoch_batches(parts, cfg, epoch, steps, rank, world)
    arch_iter = iter(make_loader(dataset, arch_batches, cfg.data.num_workers)) if arch_batches else None
    per_rank = tcfg.batch_size // world

    net.train()
    w_loss, a_loss, n_arch, lr, start = 0.0, 0.0, 0, 0.0, time.time()
    phase = "search" if arch_batches else "warm-up"
    bar = tqdm(make_loader(dataset, weight_batches, cfg.data.num_workers), total=steps,
               desc=f"search epoch {epoch + 1}/{tcfg.max_epoch} ({phase})", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    for step_in_epoch, batch in enumerate(bar):
        step = epoch * steps + step_in_epoch + 1
        lr = learning_rate(step, epoch, steps, lr_base, tcfg.warmup_epochs, tcfg.lr_decay_epochs,
                           tcfg.lr_decay_rate)
        loss, grad_norm = weight_step(net, model, weight_opt, batch, lr, cfg, rng, world)
        _check_finite(loss, "weight-step", epoch, step_in_epoch)
        w_loss += loss
        scalars = {"search/weight_loss": loss / per_rank, "search/lr": lr, "search/grad_norm": grad_norm}
        if arch_iter is not None and (step_in_epoch + 1) % scfg.arch_every == 0 and n_arch < len(arch_batches):
            loss = arch_step(net, model, arch_opt, weight_opt, next(arch_iter), cfg, rng, world)
            _check_finite(loss, "architecture-step", epoch, step_in_epoch)
            a_loss += loss
            n_arch += 1
            scalars["search/arch_loss"] = loss / per_rank
        if progress:
            bar.set_postfix(loss=f"{scalars['search/weight_loss']:.4f}", lr=f"{lr:.2e}")
        if rank == 0:
            logger.scalars(scalars, step)
    bar.close()
    return EpochStats(w_loss, steps * per_rank, a_loss, n_arch * per_rank, n_arch, time.time() - start, lr)


def score_top_path(model: SuperNet, dataset, indices: np.ndarray, batch_size: int, num_workers: int):
    """(mean loss, mean answer score of the predicted answer) of the top path on `indices`.
    The score is the training target of the argmax answer: a quick VQA-accuracy proxy."""
    model.set_path(model.top_choices())
    batches = [indices[i:i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    loss_sum, score_sum = 0.0, 0.0
    model.eval()
    try:
        with paddle.no_grad():
            for region_feats, boxes, question_ids, answer_scores, _ in make_loader(dataset, batches, num_workers):
                logits = model(region_feats, None, boxes, question_ids)
                loss_sum += float(_bce(logits, answer_scores))
                top = logits.argmax(axis=1).numpy()
                score_sum += float(answer_scores.numpy()[np.arange(len(top)), top].sum())
    finally:
        model.train()
    n = max(len(indices), 1)
    return loss_sum / n, score_sum / n


# ---- reporting ---------------------------------------------------------------------------------

def epoch_report(model: SuperNet, cfg: RunConfig, epoch: int, stats: Dict[str, float]) -> dict:
    """The epoch<N>.json content: a valid --ARCH_PATH file plus everything the search knows."""
    return {
        "version": cfg.version,
        "epoch": epoch,
        "phase": "search" if epoch > cfg.search.warmup_epochs else "warm-up",
        "genotype": model.genotype(),
        "top_ops": model.top_choices(),  # per position, skip included
        "ops": {part: [m.ops for m in model.mixed_ops(part)] for part in ("enc", "dec")},
        "probabilities": {part: [[round(p, 6) for p in probs] for probs in per_position]
                          for part, per_position in model.probabilities().items()},
        **stats,
        "hidden_size": cfg.model.hidden_size,
        "search": {k: v for k, v in cfg.to_dict()["search"].items()},
    }


def format_report(report: dict) -> str:
    lines = [f"genotype enc: {' '.join(report['genotype']['enc'])}",
             f"genotype dec: {' '.join(report['genotype']['dec'])}"]
    for part in ("enc", "dec"):
        for i, (ops, probs) in enumerate(zip(report["ops"][part], report["probabilities"][part])):
            lines.append(f"  p({part}{i:02d}) " + " ".join(f"{op} {p:.3f}" for op, p in zip(ops, probs)))
    return "\n".join(lines)


def heatmap(report: dict) -> Optional[np.ndarray]:
    """positions x ops probability heat map as an RGB uint8 array [H, W, 3] (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    all_ops = [op for op in ("SA", "GA", "RSA", "FFN", "skip")
               if any(op in ops for part in ("enc", "dec") for ops in report["ops"][part])]
    rows, labels = [], []
    for part in ("enc", "dec"):
        for i, (ops, probs) in enumerate(zip(report["ops"][part], report["probabilities"][part])):
            rows.append([probs[ops.index(op)] if op in ops else np.nan for op in all_ops])
            labels.append(f"{part}{i:02d}")
    grid = np.array(rows, dtype=np.float64)  # [positions, ops]
    fig, ax = plt.subplots(figsize=(1.1 * len(all_ops) + 2.0, 0.22 * len(rows) + 1.2), dpi=80)
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
            scalars.update({f"prob_{part}{i:02d}/{op}": p for op, p in zip(ops, probs)})
    logger.scalars(scalars, report["epoch"])
    image = heatmap(report)
    if image is not None:
        _save_png(image, os.path.join(folder, f"epoch{report['epoch']}.png"))
        if logger.writer is not None:
            logger.writer.add_image(tag="search/probabilities", img=image, step=report["epoch"])
    return path


def _save_png(image: np.ndarray, path: str) -> None:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    plt.imsave(buf, image, format="png")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# ---- the whole search --------------------------------------------------------------------------

def search(cfg: RunConfig, rank: int = 0, world: int = 1, progress: Optional[bool] = None) -> dict:
    """Search per cfg; returns a summary (per-epoch reports, last checkpoint, last genotype file)."""
    cfg.search.validate()
    return run_logged(_search, cfg, rank, world, progress)


def _search(cfg: RunConfig, rank: int, world: int, progress: bool, logger: RunLogger) -> dict:
    tcfg, dcfg, scfg = cfg.train, cfg.data, cfg.search
    vocab = open_vocab(cfg, progress)
    dataset = open_dataset(cfg, dcfg.split, vocab, progress)
    parts = partition_split(len(dataset), scfg.weight_fraction, scfg.split_seed)
    steps = len(parts.weight) // tcfg.batch_size
    if steps == 0 or len(parts.arch) < tcfg.batch_size:
        raise TrainingError(f"the {dcfg.split} split has {len(dataset)} questions: {len(parts.weight)} for weight "
                            f"steps and {len(parts.arch)} for architecture steps, and each part needs at least "
                            f"one batch of --BS={tcfg.batch_size}.")
    split_info = {"size": len(dataset), "weight": len(parts.weight), "arch": len(parts.arch),
                  "seed": scfg.split_seed, "split": dcfg.split}

    start_epoch = cfg.ckpt_epoch if cfg.resume else 0
    if cfg.resume:
        params_path, opt_path = checkpoint_to_resume(cfg)

    paddle.seed(tcfg.seed)
    model = SuperNet(cfg.model, scfg, vocab.token_size, vocab.answer_size, initial_word_vectors(cfg, vocab))
    lr_base = base_learning_rate(tcfg, dcfg.split)
    weight_opt, arch_opt = build_optimizers(model, cfg, lr_base)
    if cfg.resume:
        load_weights(model, params_path)
        saved = safe_load(opt_path)
        if saved.get("split") != split_info:
            raise TrainingError(f"{opt_path} was searched on a different split partition ({saved.get('split')}); "
                                f"this run has {split_info}. Resume with the same data and search config.")
        weight_opt.set_state_dict(optimizer_state_to_load(saved["optimizer"], model))
        arch_opt.set_state_dict(optimizer_state_to_load(saved["arch_optimizer"], model))
        if rank == 0:
            print(f"resumed search from {params_path} (epoch {start_epoch} done)")
    materialize_optimizer_state(weight_opt, model.weight_parameters())
    materialize_optimizer_state(arch_opt, model.arch_parameters())
    if start_epoch >= tcfg.max_epoch:
        raise TrainingError(f"--CKPT_E={start_epoch} is already >= --MAX_EPOCH={tcfg.max_epoch}; nothing to search.")

    net = paddle.DataParallel(model, find_unused_parameters=True) if world > 1 else model
    if rank == 0:
        logger.config(cfg.to_dict())
        logger.text(f"search on {dcfg.split}: {len(parts.weight)} questions for weight steps, {len(parts.arch)} "
                    f"for architecture steps, {steps} steps/epoch, {world} process(es), hidden size "
                    f"{cfg.model.hidden_size}, {len(model.mixed_ops('enc'))} encoder + "
                    f"{len(model.mixed_ops('dec'))} decoder positions")
    history = []
    last_ckpt = ckpt_paths(cfg.ckpt_dir, cfg.ckpt_version, start_epoch)[0] if cfg.resume else None
    last_json = None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, tcfg.max_epoch):
            stats = search_one_epoch(net, model, weight_opt, arch_opt, dataset, parts, cfg, epoch, steps,
                                     lr_base, rank, world, logger, progress)
            weight_loss = _all_reduce_sum(stats.weight_loss, world) / (stats.weight_samples * world)
            arch_loss = (_all_reduce_sum(stats.arch_loss, world) / (stats.arch_samples * world)
                         if stats.arch_steps else None)
            if rank == 0:
                summary = {"weight_loss": weight_loss, "arch_loss": arch_loss, "arch_steps": stats.arch_steps,
                           "lr": stats.lr, "seconds": round(stats.seconds, 2)}
                if scfg.eval_top_path:
                    summary["top_path_loss"], summary["top_path_score"] = score_top_path(
                        model, dataset, parts.arch, tcfg.eval_batch_size, dcfg.num_workers)
                params_path, opt_path = ckpt_paths(cfg.ckpt_dir, cfg.version, epoch + 1)
                atomic_save(to_numpy_state(model.state_dict()), params_path)
                atomic_save({"optimizer": optimizer_state_to_save(weight_opt, model),
                             "arch_optimizer": optimizer_state_to_save(arch_opt, model),
                             "epoch": epoch + 1, "seed": tcfg.seed, "split": split_info,
                             "steps_per_epoch": steps, "lr_base": lr_base, "lr": stats.lr,
                             "config": cfg.to_dict()}, opt_path)
                last_ckpt = params_path
                report = epoch_report(model, cfg, epoch + 1, {**summary, "checkpoint": params_path})
                last_json = publish_report(report, cfg.results_dir, cfg.version, logger)
                arch_text = f", arch loss {arch_loss:.5f} ({stats.arch_steps} steps)" if arch_loss is not None else ""
                score_text = (f", top path score {summary['top_path_score']:.4f}" if scfg.eval_top_path else "")
                line = (f"search epoch {epoch + 1}/{tcfg.max_epoch}: weight loss {weight_loss:.5f}{arch_text}"
                        f"{score_text}, lr {stats.lr:.3e}, {stats.seconds:.1f}s, saved {params_path}, {last_json}")
                print(line)
                print(f"  enc: {' '.join(report['genotype']['enc'])}\n  dec: {' '.join(report['genotype']['dec'])}")
                logger.text(line)
                logger.scalars({k: v for k, v in summary.items() if isinstance(v, float)}, epoch + 1)
                history.append(report)
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        if rank == 0:
            report_interrupt(cfg, "search", epoch, last_ckpt, logger)
        raise
    return {"history": history, "last_checkpoint": last_ckpt, "genotype_path": last_json, "version": cfg.version}
