"""Retrieval cost and quality on the synthetic Flickr30K: the full score matrix vs two-stage
retrieval, with a tiny MatchingNet trained for a few epochs on CPU; prints ONE JSON line.

1. Writes the synthetic world (mmnas/data/synthetic_flickr.py, spec 5.3 setting: 3 objects of
   4x4 types) to a temporary folder (or --data), features --feat-size wide.
2. Trains a tiny MatchingNet (d=64, encoder [SA, FFN, SA, FFN], decoder [GA, RSA, FFN, GA, RSA,
   FFN], the spec's prototype) for --epochs with random negatives redrawn every epoch, the
   reference's loss (2 BCE pos + BCE negc + BCE negi), Adam (0.9, 0.98, 1e-9), lr --lr with the
   1/4, 1/2, 3/4 warm-up, x0.2 over the last two epochs from 6 epochs on, clip 1.0, batch 64.
3. Scores the test split (n images x 5n captions) with the full matrix and two-stage (top --top-k)
   with each first stage: the head on decoder-free pooling (data/flickr_scoring.py) and the
   learned dual encoder fitted on the training split (models/matching_first_stage.py); times
   them and reports R@1/5/10, medr, meanr, pairs per second, and chance.

    python bench/retrieval.py [--epochs 3] [--train-images 1000] [--test-images 50] [--top-k 10]
    # the cost at the real size (untrained, 36 regions of 2048): pairs per second only
    python bench/retrieval.py --epochs 0 --config configs/itm/mmnasnet_small.yml --feat-size 2048 \
        --types 8 --objects 36 --train-images 2 --test-images 10 --caption-chunk 50

The score matrix's standard deviation is reported: a collapsed (constant) scorer gives the tie
values t2i 2/10/20 at n = 50 (metrics/retrieval.py).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="a data root holding itm/ (default: a fresh synthetic world)")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=50)
    p.add_argument("--feat-size", type=int, default=32)
    p.add_argument("--objects", type=int, default=3, help="regions per synthetic image (36 as the real features)")
    p.add_argument("--types", type=int, default=4, help="colours = shapes of the synthetic world")
    p.add_argument("--config", default=None,
                   help="a model config (e.g. configs/itm/mmnasnet_small.yml) instead of the spec's tiny prototype")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--caption-chunk", type=int, default=250, help="pairs per forward in the full matrix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def lr_at(epoch: int, base: float, epochs: int) -> float:
    """The reference's rule scaled down: 1/4, 1/2, 3/4 over the first 3 epochs, x0.2 for the last 2 (>= 6 epochs)."""
    if epoch < 3:
        return base * (epoch + 1) / 4
    return base * (0.2 if epochs >= 6 and epoch >= epochs - 2 else 1.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmnas import runtime
    runtime.configure(threads=args.threads)
    import numpy as np
    import paddle

    from mmnas.config import load_config
    from mmnas.data.flickr import (FlickrDataset, TripletDataset, build_caption_vocab, collate_triplets,
                                   random_negative_tables)
    from mmnas.data.flickr_scoring import (caption_summaries, cheap_score_matrix, full_score_matrix,
                                           image_mean_features, two_stage_score_matrix)
    from mmnas.data.synthetic_flickr import make_synthetic_flickr
    from mmnas.metrics.retrieval import chance_recalls, retrieval_scores
    from mmnas.models.matching_first_stage import fit_first_stage
    from mmnas.models.matching_head import MatchingNet, first_stage, pair_scorer
    from mmnas.models.matching_loss import matching_loss

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_retrieval_")
        root = tmp.name
        make_synthetic_flickr(root, args.train_images, 10, args.test_images, n_objects=args.objects,
                              n_types=args.types, feat_size=args.feat_size, seed=args.seed)
    vocab = build_caption_vocab(root)
    train = FlickrDataset(root, "train", vocab, preload=True, progress=False, feat_size=args.feat_size)
    test = FlickrDataset(root, "test", vocab, preload=True, progress=False, feat_size=args.feat_size)

    paddle.seed(args.seed)
    if args.config:
        cfg = load_config(args.config).model
    else:
        cfg = load_config("tiny").model
        cfg.word_embed = 32
        cfg.enc, cfg.dec = ["SA", "FFN", "SA", "FFN"], ["GA", "RSA", "FFN", "GA", "RSA", "FFN"]
    cfg.feat_size = args.feat_size
    net = MatchingNet(cfg, token_size=len(vocab))
    opt = paddle.optimizer.Adam(learning_rate=args.lr, beta1=0.9, beta2=0.98, epsilon=1e-9,
                                parameters=net.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    triplets = TripletDataset(train, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        net.train()
        triplets.set_epoch(epoch)
        triplets.set_negatives(*random_negative_tables(train.n_images, np.random.default_rng([args.seed, epoch])))
        order = rng.permutation(len(train))
        steps = len(order) // args.batch
        total = 0.0
        opt.set_lr(lr_at(epoch, args.lr, args.epochs))
        for step in range(steps):
            batch = collate_triplets([triplets[c] for c in order[step * args.batch:(step + 1) * args.batch]])
            logits = net(paddle.to_tensor(batch["region_feats"]), paddle.to_tensor(batch["boxes"]),
                         paddle.to_tensor(batch["caption_ids"]))
            b = int(batch["batch_size"])
            loss = matching_loss(logits[:b], logits[b:2 * b], logits[2 * b:])["loss"]
            loss.backward()
            opt.step()
            opt.clear_grad()
            total += float(loss)
        losses.append(total / max(1, steps * args.batch))
        if not args.quiet:
            print(f"epoch {epoch + 1}: loss per caption {losses[-1]:.3f}", file=sys.stderr)
    train_seconds = time.perf_counter() - t0

    scorer = pair_scorer(net)
    scorer(test.pair_batch([0] * 8, range(8)))  # warm-up: the first pass pays one-time set-up costs
    full, full_stats = full_score_matrix(test, scorer, caption_chunk=args.caption_chunk, progress=not args.quiet)
    t1 = time.perf_counter()
    cheap = cheap_score_matrix(test, *first_stage(net), progress=False)
    cheap_seconds = time.perf_counter() - t1
    two, two_stats = two_stage_score_matrix(test, scorer, cheap, top_k=args.top_k,
                                            caption_chunk=args.caption_chunk, progress=not args.quiet)
    # the learned first stage: fitted on the training split's features, applied to the test split
    t2 = time.perf_counter()
    caption_summary = first_stage(net)[0]
    learned = fit_first_stage(image_mean_features(train, progress=False), caption_summaries(train, caption_summary),
                              seed=args.seed)
    fit_seconds = time.perf_counter() - t2
    t3 = time.perf_counter()
    learned_cheap = learned.scores(image_mean_features(test, progress=False), caption_summaries(test, caption_summary))
    learned_cheap_seconds = time.perf_counter() - t3
    two_l, two_l_stats = two_stage_score_matrix(test, scorer, learned_cheap, top_k=args.top_k,
                                                caption_chunk=args.caption_chunk, progress=not args.quiet)
    result = {
        "bench": "retrieval", "date": time.strftime("%Y-%m-%d"), "cpu_threads": runtime.thread_count(),
        "train_images": train.n_images, "test_images": test.n_images, "test_captions": len(test),
        "feat_size": args.feat_size, "regions": args.objects, "hidden_size": cfg.hidden_size,
        "config": args.config or "spec 5 prototype (d=64)", "epochs": args.epochs,
        "train_seconds": round(train_seconds, 1), "loss_per_caption": [round(v, 4) for v in losses],
        "full": {**{k: round(v, 2) for k, v in retrieval_scores(full).items()},
                 "pairs": int(full_stats["pairs"]), "seconds": round(full_stats["seconds"], 2),
                 "pairs_per_s": round(full_stats["pairs_per_s"], 1), "score_std": float(np.std(full))},
        "two_stage": {**{k: round(v, 2) for k, v in retrieval_scores(two).items()}, "top_k": args.top_k,
                      "pairs": int(two_stats["pairs"]), "share_scored": round(two_stats["share_scored"], 3),
                      "seconds": round(cheap_seconds + two_stats["seconds"], 2),
                      "first_stage_seconds": round(cheap_seconds, 2),
                      "cheap_only": {k: round(v, 2) for k, v in retrieval_scores(cheap).items()}},
        "two_stage_learned": {**{k: round(v, 2) for k, v in retrieval_scores(two_l).items()}, "top_k": args.top_k,
                              "pairs": int(two_l_stats["pairs"]),
                              "share_scored": round(two_l_stats["share_scored"], 3),
                              "seconds": round(learned_cheap_seconds + two_l_stats["seconds"], 2),
                              "first_stage_seconds": round(learned_cheap_seconds, 2),
                              "fit_seconds": round(fit_seconds, 2),
                              "cheap_only": {k: round(v, 2) for k, v in retrieval_scores(learned_cheap).items()}},
        "chance": {k: round(v, 2) for k, v in chance_recalls(test.n_images).items()},
    }
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
