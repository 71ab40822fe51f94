"""--RUN=predict on a grounding model: one typed referring expression about one image's feature
file -> the chosen region's box (decoded and clipped like --RUN=val: tasks/grounding.py) and the
runners-up, printed, drawn on the photo (or a blank canvas of the image's size) and optionally
written as JSON.

    python run.py --RUN=predict --MODEL=vgd_tiny --CKPT_V=vgd --CKPT_E=6 \
        --FEATS=data/vgd/bua-r101-fix100/COCO_train2014_000000581857.jpg.npz --QUESTION="the red cup"
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
import paddle

from ..checkpoint_files import load_weights
from ..config import RunConfig
from ..data import tokenize
from ..data.refcoco import encode_tokens
from ..tasks import task_named
from .evaluate import write_json_atomic
from .predict import PredictError, read_image_features, resolve_vocab


def ground(model, image, words, vocab, max_token: int) -> dict:
    """The task's kept outputs for one expression (words) on one image (ImageFeatures):
    regions [K], region_scores [K] (probabilities), boxes [K, 4] (pixels), best first; and
    word_weights [max_token]: the head's text AttFlat weights over the word positions (glimpses
    averaged; they sum to 1 over the words read, padding gets < 1e-20)."""
    task = task_named("grounding")
    ids = encode_tokens(words, vocab.token_to_ix, max_token)[None]  # [1, T], the last id PAD
    batch = {"boxes": image.boxes[None], "image_size": np.array([[image.image_h, image.image_w]], np.float32)}
    model.eval()
    text_pool = model.head.attflat_lang
    text_pool.attention_record = []  # records only during this call
    try:
        with paddle.no_grad():
            log_scores, deltas = model(paddle.to_tensor(image.region_feats[None]), None,
                                       paddle.to_tensor(batch["boxes"]), paddle.to_tensor(ids))
        word_weights = text_pool.attention_record[0].numpy()[0].mean(axis=1)  # [T, G] -> [T]
    finally:
        text_pool.attention_record = None
    kept = task.predict_outputs((log_scores.numpy(), deltas.numpy()), batch)
    return dict({k: v[0] for k, v in kept.items()}, word_weights=word_weights)


def top_picks(picks: dict, shown: int) -> dict:
    """picks with the per-region entries cut to the best `shown` (word_weights kept whole)."""
    return {k: v if k == "word_weights" else v[:shown] for k, v in picks.items()}


def draw_words(ax, words, word_weights) -> None:
    """The expression under the picture, each word shaded by its attention weight (the word's
    weight printed after it; darkest = the most weighed word; words past the last position read
    are marked unread), and a legend line saying what the shading is."""
    from matplotlib import colormaps
    shade = colormaps["Oranges"]
    top_weight = float(max(word_weights)) or 1.0
    previous, place = None, dict(xy=(0.0, -0.02), xycoords="axes fraction", va="top")
    for i, word in enumerate(words):
        read = i < len(word_weights) - 1  # the last position is always PAD
        weight = float(word_weights[i]) if read else 0.0
        label = f"{word} {weight:.2f}" if read else f"{word} [not read]"
        colour = shade(0.1 + 0.8 * weight / top_weight) if read else "white"
        previous = ax.annotate(label, fontsize=9, bbox={"facecolor": colour, "edgecolor": "0.6", "pad": 2}, **place)
        place = dict(xy=(1.0, 0.0), xycoords=previous, xytext=(6, 0), textcoords="offset points", va="bottom")
    ax.annotate("word shading: the model's attention over the expression's words (darker = more; the weights "
                "sum to 1 over the words read); box labels: rank and probability",
                xy=(0.0, -0.02), xycoords="axes fraction", xytext=(0, -20), textcoords="offset points",
                va="top", fontsize=8, color="0.3")


def box_figure(image, picks: dict, expression: str, photo: Optional[str] = None):
    """A matplotlib figure: the chosen box (thick, red) and the runners-up (dashed) over every
    proposal (thin, grey), on the photo or a blank canvas of the image's size; under it the
    expression's words shaded by the model's attention (draw_words) when picks has word_weights."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(6, 6 * image.image_h / image.image_w), dpi=100)
    if photo is not None:
        from PIL import Image
        with Image.open(photo) as im:
            ax.imshow(np.asarray(im.convert("RGB")), extent=(0, image.image_w, image.image_h, 0))
    ax.set_xlim(0, image.image_w)
    ax.set_ylim(image.image_h, 0)
    for x1, y1, x2, y2 in image.boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="0.7", linewidth=0.6))
    for rank, (box, score) in enumerate(zip(picks["boxes"], picks["region_scores"])):
        x1, y1, x2, y2 = box
        chosen = rank == 0
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red" if chosen else "tab:blue",
                               linewidth=2.5 if chosen else 1.0, linestyle="-" if chosen else "--"))
        ax.text(x1, y1, f"{rank + 1}: {score:.2f}", fontsize=8, color="white", va="bottom",
                bbox={"facecolor": "red" if chosen else "tab:blue", "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    ax.set_title(f'"{expression}"', fontsize=10)
    ax.axis("off")
    if "word_weights" in picks:
        draw_words(ax, tokenize(expression or ""), picks["word_weights"])
    return fig


def draw_boxes(path: str, image, picks: dict, expression: str, photo: Optional[str] = None) -> None:
    """box_figure written as a PNG to `path`."""
    import matplotlib.pyplot as plt
    fig = box_figure(image, picks, expression, photo)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


class Grounder:
    """A grounding model loaded once (weights, vocabulary) for many expressions: what
    --RUN=predict does for one, and what the web demo's grounding mode does for each request."""

    def __init__(self, cfg: RunConfig, weights: str, vocab_path: Optional[str] = None):
        self.vocab, self.vocab_source = resolve_vocab(weights, vocab_path, cfg)
        self.max_token = self.vocab.max_token or cfg.model.max_token
        self.feat_size = cfg.model.feat_size
        self.model = task_named("grounding").build_model(cfg.model, self.vocab)
        load_weights(self.model, weights)

    def ground(self, image, expression: str):
        """(words, words not in the vocabulary, picks) for one expression on one ImageFeatures;
        PredictError for an expression without words or without a known word."""
        words = tokenize(expression or "")
        if not words:
            raise PredictError(f"the expression {expression!r} has no words; type one, e.g. --QUESTION=\"the red cup\".")
        unknown = [w for w in words if w not in self.vocab.token_to_ix]
        if len(unknown) == len(words):
            raise PredictError(f"none of the words of {expression!r} is in the model's vocabulary of "
                               f"{self.vocab.token_size} tokens (from {self.vocab_source}); use words of the training "
                               f"expressions.")
        return words, unknown, ground(self.model, image, words, self.vocab, self.max_token)


def pick_list(picks: dict, shown: int) -> list:
    """The first `shown` picks as JSON-ready dicts {region, probability, box [x1, y1, x2, y2] in pixels}."""
    return [{"region": int(r), "probability": round(float(p), 6), "box": [round(float(v), 2) for v in b]}
            for r, p, b in zip(picks["regions"][:shown], picks["region_scores"][:shown], picks["boxes"][:shown])]


def run_predict_grounding(cfg: RunConfig, weights: str, feats: str, expression: str, image_path: Optional[str] = None,
                          topk: int = 5, out_json: Optional[str] = None, vocab_path: Optional[str] = None,
                          picture_path: Optional[str] = None) -> dict:
    """--RUN=predict for a grounding dataset: the box the expression names and topk - 1 runners-up."""
    image = read_image_features(feats, cfg.model.feat_size)
    if image_path is not None and not os.path.isfile(image_path):
        raise PredictError(f"--IMAGE={image_path} does not exist; give the photo the features came from, or leave it out.")
    grounder = Grounder(cfg, weights, vocab_path)
    words, unknown, picks = grounder.ground(image, expression)
    max_token = grounder.max_token
    shown = min(topk, len(picks["regions"]))
    lines = [f"expression: {expression}"]
    if unknown:
        lines.append(f"  (not in the vocabulary, read as UNK: {', '.join(unknown)})")
    if len(words) > max_token - 1:
        lines.append(f"  (past the {max_token - 1}th word, not read: {' '.join(words[max_token - 1:])})")
    for rank in range(shown):
        box = ", ".join(f"{v:.1f}" for v in picks["boxes"][rank])
        lines.append(f"  {'chosen' if rank == 0 else f'{rank + 1}.':>6} region {int(picks['regions'][rank]):3d}  "
                     f"p {picks['region_scores'][rank]:.3f}  box [{box}]")
    print("\n".join(lines))
    stem = os.path.basename(feats).split(".")[0]
    picture_path = picture_path or os.path.join(
        cfg.results_dir, "predict", f"{stem}__{re.sub(r'[^a-z0-9]+', '_', ' '.join(words))[:60]}.png")
    draw_boxes(picture_path, image, top_picks(picks, shown), expression, image_path)
    print(f"picture: {picture_path}")
    result = {"expression": expression, "weights": weights, "vocabulary": grounder.vocab_source, "feature_file": feats,
              "picks": pick_list(picks, shown),
              "picture": picture_path}
    if out_json:
        write_json_atomic(result, out_json)
        print(f"wrote {out_json}")
    return result
