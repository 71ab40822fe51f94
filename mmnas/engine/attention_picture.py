"""The attention picture of one answer: where the model looked, and which words it weighed.

The photo (or, without one, a grey canvas of the features' image_w x image_h with every region's
outline) is turned to a dim grey everywhere except where the image attention lies: each pixel
keeps its colour in proportion to sqrt(weight / largest weight) of the strongest region covering
it, so that weaker regions stay visible next to a dominant one; the grey keeps dark things
apart (dim_unattended). The strongest regions are outlined in colour between a white and a black
stroke (visible on dark and light) and labelled "#rank weight", the labels placed so that none
covers another (place_labels). Under the picture: the top answers with their scores, then the
question's words on a colour scale of the language attention, each with its weight; a word
outside the vocabulary is struck through in grey on grey and marked [unk] with its weight (the
model reads it as UNK), a word past the 14th is grey italic and marked [not read]. Last, a
legend says what the labels, colours, marks and scores mean, so the picture reads on its own.

The picture keeps the image's own size when its width is between MIN_WIDTH and MAX_SIDE pixels
(the image is scaled into that range otherwise), so the photo panel is image_w x image_h pixels
for COCO-sized images. Rendering uses matplotlib's Agg canvas directly (no pyplot state).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np

from ..checkpoint_files import atomic_write

MAX_SIDE = 1280  # the image panel's longer side at most this many pixels
MIN_WIDTH = 480  # ... and its width at least this many, so the words stay readable
OUTLINED = 3  # regions outlined and labelled
DPI = 100
OUTLINE_COLOURS = ("#ff2d95", "#00d7ff", "#ff9f0a", "#bf5af2", "#ffffff")
OUTLINE_STROKES = (("black", 6.5), ("white", 4.5))  # (colour, width) under each 2.5-wide outline
VEIL_FLOOR, VEIL_RANGE = 0.12, 0.55  # an unattended pixel: this grey + range x sqrt(its luminance)
LABEL_FONT, LABEL_PAD, LABEL_GAP = 11, 3, 3  # region labels: font size, padding and gap between them (px)
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PHOTO_PIXELS = 40_000_000  # a photo's width x height at most (8000 x 5000); read as float RGB: 480 MB


class PhotoError(ValueError):
    """A photo too large to draw on; the message names it and its size."""


def find_photo(feature_path: str) -> Optional[str]:
    """The photo of a feature file at the documented place, or None:
    <root>/feats/<split>/<name>.jpg.npz -> <root>/images/<split>/<name>.jpg (or .png, as the
    synthetic dataset writes them)."""
    folder, name = os.path.split(os.path.abspath(feature_path))
    images = os.path.join(os.path.dirname(os.path.dirname(folder)), "images", os.path.basename(folder))
    stem = name[:-len(".npz")] if name.endswith(".npz") else name  # COCO_val2014_000000000042.jpg
    base = stem.split(".")[0]
    for candidate in [stem] + [base + suffix for suffix in PHOTO_SUFFIXES]:
        path = os.path.join(images, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_photo(photo) -> np.ndarray:
    """A path or an array -> float RGB [H, W, 3] in 0..1. A file's size is read from its header
    first (PIL opens lazily): PhotoError above MAX_PHOTO_PIXELS, before any pixel is decoded, so
    a small compressed file that would expand to gigabytes takes no memory."""
    if isinstance(photo, (str, os.PathLike)):
        from PIL import Image
        try:
            im = Image.open(photo)
        except Image.DecompressionBombError:  # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS), above ours
            raise PhotoError(f"the photo {photo} has more than {MAX_PHOTO_PIXELS:,} pixels, "
                             f"the most a picture is drawn on.") from None
        with im:
            if im.width * im.height > MAX_PHOTO_PIXELS:
                raise PhotoError(f"the photo {photo} is {im.width} x {im.height} pixels; a picture is drawn on "
                                 f"at most {MAX_PHOTO_PIXELS:,} pixels.")
            photo = np.asarray(im.convert("RGB"))
    photo = np.asarray(photo)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    photo = photo[..., :3]
    return photo.astype(np.float32) / 255.0 if photo.dtype == np.uint8 else photo.astype(np.float32)


def display_scale(image_w: int, image_h: int) -> float:
    scale = min(1.0, MAX_SIDE / max(image_w, image_h))
    return MIN_WIDTH / image_w if image_w * scale < MIN_WIDTH else scale


def attention_light(boxes: np.ndarray, weights: np.ndarray, image_w: int, image_h: int,
                    grid_w: int, grid_h: int) -> np.ndarray:
    """float [grid_h, grid_w] in 0..1: at each cell, sqrt(w / max w) of the strongest region covering it."""
    light = np.zeros((grid_h, grid_w), dtype=np.float32)
    top = float(weights.max()) if len(weights) else 0.0
    if top <= 0:
        return light
    sx, sy = grid_w / image_w, grid_h / image_h
    for (x1, y1, x2, y2), w in zip(boxes, weights):
        if w <= 0:
            continue
        c1, c2 = int(np.floor(x1 * sx)), int(np.ceil((x2 + 1) * sx))
        r1, r2 = int(np.floor(y1 * sy)), int(np.ceil((y2 + 1) * sy))
        cell = light[max(r1, 0):max(r2, 0), max(c1, 0):max(c2, 0)]
        np.maximum(cell, np.sqrt(w / top), out=cell)
    return light


def dim_unattended(rgb: np.ndarray, light: np.ndarray) -> np.ndarray:
    """float RGB [H, W, 3]: each pixel between its own colour (light 1) and a dim grey of its
    luminance (light 0), VEIL_FLOOR + VEIL_RANGE * sqrt(luminance): the square root keeps dark
    things apart (a black overlay merges them into black). light [gh, gw] is stretched to the
    photo's H x W, nearest cell."""
    height, width = rgb.shape[:2]
    rows = np.arange(height) * light.shape[0] // height
    cols = np.arange(width) * light.shape[1] // width
    lit = light[rows][:, cols][..., None]  # [H, W, 1]
    grey = VEIL_FLOOR + VEIL_RANGE * np.sqrt(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return lit * rgb + (1.0 - lit) * grey[..., None]


class _Layout:
    """Pixel layout of the caption under the image (display coordinates measured from the top)."""
    MARGIN, GAP, LINE, ANSWER_LINE = 12, 8, 50, 34
    LEGEND_KEY, LEGEND_LINE, LEGEND_GAP = 64, 14, 5  # key column width, text line height, between entries


def _text_size(fig, renderer, text: str, **kwargs) -> Tuple[float, float]:
    t = fig.text(0, 0, text, **kwargs)
    extent = t.get_window_extent(renderer)
    t.remove()
    return extent.width, extent.height


def _text_width(fig, renderer, text: str, **kwargs) -> float:
    return _text_size(fig, renderer, text, **kwargs)[0]


def _wrap(fig, renderer, text: str, width: float, **kwargs) -> List[str]:
    """`text` in lines no wider than `width` pixels (a single longer word stays on its own line)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and _text_width(fig, renderer, candidate, **kwargs) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return lines + [line] if line else lines


# ---- region labels -------------------------------------------------------------------------

Rect = Tuple[float, float, float, float]  # x, y, width, height in panel pixels from the top-left


def _overlap(a: Rect, b: Rect, gap: float) -> bool:
    return (a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and
            a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap)


def place_labels(boxes, sizes, panel_w: float, panel_h: float, gap: float = LABEL_GAP) -> List[Rect]:
    """A rectangle (x, y, w, h) for each label, in the order given (the strongest region first),
    none overlapping an earlier one by less than `gap` pixels and all inside the panel. boxes:
    (x1, y1, x2, y2) of each region, sizes: (w, h) of each label, in panel pixels. Each label takes
    the first free spot at a corner of its region (on the top edge outside, inside at the top, on
    the bottom edge outside, inside at the bottom; left, then right), else the free spot nearest
    its region's top-left corner."""
    placed: List[Rect] = []
    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes):
        def inside(x, y):
            return min(max(x, 0.0), max(panel_w - w, 0.0)), min(max(y, 0.0), max(panel_h - h, 0.0))

        def free(x, y):
            return not any(_overlap((x, y, w, h), other, gap) for other in placed)

        corners = [inside(x, y) for x in (x1, x2 - w) for y in (y1 - h, y1 + 1, y2, y2 - h - 1)]
        spot = next((c for c in corners if free(*c)), None)
        if spot is None:  # every corner is taken: the nearest free spot on a grid of the panel
            step = max(2.0, h / 4)
            grid = [(x, y) for x in np.arange(0, max(panel_w - w, 0) + 1, step)
                    for y in np.arange(0, max(panel_h - h, 0) + 1, step)]
            grid.sort(key=lambda c: (c[0] - corners[0][0]) ** 2 + (c[1] - corners[0][1]) ** 2)
            spot = next((c for c in grid if free(*c)), corners[0])  # a panel too small: overlap
        placed.append((float(spot[0]), float(spot[1]), float(w), float(h)))
    return placed


# ---- the legend ----------------------------------------------------------------------------

def legend_entries(answer) -> List[Tuple[str, str]]:
    """(key, sentence) of each legend line under the words: what the region labels, the word
    colours, the word marks the question has, and the answer scores mean. Keys: "label" (drawn as
    the #1 region's label), "words", "unk", "cut", "score"."""
    from .predict import score_meaning
    entries = [("label", "the region the model looked at most (#1, then #2, #3) and its share of the "
                         "image attention (all regions' shares sum to 1); the greyer and dimmer a place, "
                         "the less it was looked at."),
               ("words", "word colour: how much the model weighed the word (language attention, darker = "
                         "more; the numbers under the words sum to 1).")]
    unknown, cut = answer.unread_words()
    if unknown:
        entries.append(("unk", "[unk]: not in the model's vocabulary, read as the unknown word."))
    if cut:
        entries.append(("cut", f"[not read]: past the {sum(t.used for t in answer.tokens)}th word, the last "
                               f"the model reads."))
    shown = "the number beside 'match' is" if answer.score_kind == "match" else "the numbers beside the answers are"
    entries.append(("score", f"{shown} {score_meaning(answer.score_kind)}"))
    return entries


@dataclass
class PictureLayout:
    """Where things are in a picture, in pixels from its top-left corner."""
    width: int
    height: int
    image_box: List[int]  # [x0, y0, x1, y1] of the image panel
    scale: float  # panel pixels per image pixel
    labels: List[Tuple[str, Rect]] = field(default_factory=list)  # (text, rect) of each region label
    legend: List[str] = field(default_factory=list)  # the legend's sentences, top to bottom


def attention_image(answer, photo: Union[str, np.ndarray, None] = None) -> np.ndarray:
    """The picture (see module docstring) as uint8 RGB [H, W, 3], e.g. for VisualDL's add_image."""
    return draw_attention_picture(answer, photo)[0]


def draw_attention_picture(answer, photo: Union[str, np.ndarray, None] = None) -> Tuple[np.ndarray, PictureLayout]:
    """(the picture as uint8 RGB [H, W, 3], where its parts are)."""
    from matplotlib import cm, patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import IdentityTransform
    from .predict import format_score

    image = answer.image
    w, h = image.image_w, image.image_h
    scale = display_scale(w, h)
    panel_w, panel_h = int(round(w * scale)), int(round(h * scale))
    fig = Figure(dpi=DPI, figsize=(panel_w / DPI, 1.0))
    renderer = FigureCanvasAgg(fig).get_renderer()
    L = _Layout
    word_font, small_font, legend_font = dict(fontsize=13), dict(fontsize=8), dict(fontsize=9)
    label_font = dict(fontsize=LABEL_FONT, fontweight="bold")

    # words placed left to right, wrapped at the panel width: (line, x, token index, box width)
    weights = answer.word_weights()
    top_weight = max(weights) or 1.0
    placed, line, x = [], 0, L.MARGIN
    labels = [_word_label(token, weight) for token, weight in zip(answer.tokens, weights)]
    for i, token in enumerate(answer.tokens):
        box_w = max(_text_width(fig, renderer, token.word, **word_font),
                    _text_width(fig, renderer, labels[i], **small_font)) + 10
        if x + box_w > panel_w - L.MARGIN and x > L.MARGIN:
            line, x = line + 1, L.MARGIN
        placed.append((line, x, i, box_w))
        x += box_w + L.GAP

    # the region labels ("#rank weight"), placed so that none covers another
    region_weights = np.where(answer.region_is_padding, 0.0, answer.image_attention)
    real = ~answer.region_is_padding
    ranked = [r for r in answer.top_regions(OUTLINED) if region_weights[r] > 0]
    label_texts = [f"#{rank} {region_weights[r]:.2f}" for rank, r in enumerate(ranked, 1)]
    label_sizes = [tuple(v + 2 * LABEL_PAD for v in _text_size(fig, renderer, t, **label_font)) for t in label_texts]
    label_rects = place_labels([image.boxes[r] * scale for r in ranked], label_sizes, panel_w, panel_h)

    # the legend: (key, wrapped lines, top offset in the legend)
    legend, legend_h = [], 0
    score_key = format_score(answer.scores[0], answer.score_kind)
    key_w = max([L.LEGEND_KEY, _text_width(fig, renderer, score_key, fontsize=11, fontweight="bold") + 10] +
                [w + 10 for w, _ in label_sizes[:1]])
    for key, sentence in legend_entries(answer):
        lines = _wrap(fig, renderer, sentence, panel_w - 2 * L.MARGIN - key_w, **legend_font)
        legend.append((key, lines, legend_h))
        legend_h += max(len(lines) * L.LEGEND_LINE, 20) + L.LEGEND_GAP
    words_h = L.ANSWER_LINE + L.LINE * (line + 1)
    caption_h = words_h + legend_h + L.MARGIN
    total_h = panel_h + caption_h
    fig.set_size_inches(panel_w / DPI, total_h / DPI)
    px = IdentityTransform()  # display pixels, origin bottom-left

    def y_px(from_top):
        return total_h - from_top

    # ---- the image panel
    ax = fig.add_axes((0, caption_h / total_h, 1, panel_h / total_h))
    ax.set_axis_off()
    light = attention_light(image.boxes[real], region_weights[real], w, h,
                            max(1, panel_w // 2), max(1, panel_h // 2))
    canvas = read_photo(photo) if photo is not None else np.full(light.shape + (3,), 0.86, dtype=np.float32)
    ax.imshow(dim_unattended(canvas, light), extent=(0, w, h, 0), aspect="auto", interpolation="bilinear")
    if photo is None:  # on the blank canvas, show where the regions are
        for x1, y1, x2, y2 in image.boxes[real]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.7, ec="#9a9a9a"))
    # outlines: the colour between a white and a black stroke, so that some of it contrasts
    # with any background
    halo = [patheffects.Stroke(linewidth=lw, foreground=c) for c, lw in OUTLINE_STROKES] + [patheffects.Normal()]
    for rank, r in reversed(list(enumerate(ranked, 1))):  # the strongest drawn last, on top
        x1, y1, x2, y2 = image.boxes[r]
        colour = OUTLINE_COLOURS[(rank - 1) % len(OUTLINE_COLOURS)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.5, ec=colour, path_effects=halo))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    for rank, (text, (lx, ly, lw, lh)) in enumerate(zip(label_texts, label_rects), 1):
        _chip(fig, lx, y_px(ly + lh), lw, lh, text, OUTLINE_COLOURS[(rank - 1) % len(OUTLINE_COLOURS)], px,
              label_font)

    # ---- the caption: answers, then the weighted words
    y = y_px(panel_h + L.ANSWER_LINE / 2 + 2)
    first = f"{answer.answers[0]}  {format_score(answer.scores[0], answer.score_kind)}"
    fig.text(L.MARGIN, y, first, transform=px, fontsize=14, fontweight="bold", va="center")
    rest = "   ".join(f"{a}  {format_score(s, answer.score_kind)}"
                      for a, s in zip(answer.answers[1:], answer.scores[1:]))
    offset = _text_width(fig, renderer, first, fontsize=14, fontweight="bold") + 18
    fig.text(L.MARGIN + offset, y, rest, transform=px, fontsize=11, color="#555555", va="center")
    for line, x, i, box_w in placed:
        token, weight = answer.tokens[i], weights[i]
        top = panel_h + L.ANSWER_LINE + line * L.LINE
        if token.known and token.used:
            fill = cm.Oranges(0.08 + 0.8 * weight / top_weight)
        else:  # unknown (read as UNK: its weight is in the label) or not read
            fill = "#e4e4e4" if token.used else "white"
        fig.add_artist(Rectangle((x, y_px(top + 26)), box_w, 24, transform=px, fc=fill,
                                 ec="#cccccc" if token.used else "#dddddd", lw=0.8))
        if token.known and token.used:
            colour = "white" if weight / top_weight > 0.7 else "black"
        else:
            colour = "#5a5a5a" if token.used else "#8e8e8e"
        text = fig.text(x + 5, y_px(top + 14), token.word, transform=px, va="center", color=colour,
                        fontstyle="normal" if token.used else "italic", **word_font)
        if not token.known:  # struck through
            word_w = text.get_window_extent(renderer).width
            fig.add_artist(_line(x + 3, x + 7 + word_w, y_px(top + 14), px))
        fig.text(x + 2, y_px(top + 38), labels[i], transform=px, va="center", color="#666666", **small_font)

    # ---- the legend, each line after its key
    legend_top = panel_h + words_h
    fig.add_artist(_line(L.MARGIN, panel_w - L.MARGIN, y_px(legend_top - 4), px, colour="#dddddd", lw=1.0))
    for key, lines, offset in legend:
        top = legend_top + offset
        _legend_key(fig, key, L.MARGIN, y_px(top + 17), label_texts, label_sizes, score_key, px, label_font)
        for n, text_line in enumerate(lines):
            fig.text(L.MARGIN + key_w, y_px(top + 8 + n * L.LEGEND_LINE), text_line, transform=px,
                     va="center", color="#333333", **legend_font)

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    layout = PictureLayout(width=int(rgb.shape[1]), height=int(rgb.shape[0]), image_box=[0, 0, panel_w, panel_h],
                           scale=scale, labels=list(zip(label_texts, label_rects)),
                           legend=[" ".join(lines) for _, lines, _ in legend])
    return rgb, layout


def _chip(fig, x, y, w, h, text, colour, transform, font):
    """A region label: `text` in black on `colour`, its rectangle's bottom-left at display (x, y)."""
    from matplotlib.patches import Rectangle
    fig.add_artist(Rectangle((x, y), w, h, transform=transform, fc=colour, ec="black", lw=1.0))
    fig.text(x + LABEL_PAD, y + h / 2, text, transform=transform, va="center_baseline", ha="left", color="black",
             **font)


def _legend_key(fig, key, x, y, label_texts, label_sizes, score_key, transform, label_font):
    """The key of a legend line, its bottom-left at display (x, y)."""
    from matplotlib import cm
    from matplotlib.patches import Rectangle
    if key == "label":
        text, (w, h) = (label_texts[0], label_sizes[0]) if label_texts else ("#1", (24, 18))
        _chip(fig, x, y, w, h, text, OUTLINE_COLOURS[0], transform, label_font)
    elif key == "words":
        for i in range(5):  # the word colour scale, least to most weighed
            fig.add_artist(Rectangle((x + i * 10, y + 2), 10, 14, transform=transform,
                                     fc=cm.Oranges(0.08 + 0.2 * i), ec="#cccccc", lw=0.5))
    elif key == "unk":
        fig.add_artist(Rectangle((x, y + 2), 40, 14, transform=transform, fc="#e4e4e4", ec="#cccccc", lw=0.8))
        fig.add_artist(_line(x + 4, x + 36, y + 9, transform))
    elif key == "cut":
        fig.add_artist(Rectangle((x, y + 2), 40, 14, transform=transform, fc="white", ec="#dddddd", lw=0.8))
        fig.text(x + 4, y + 9, "word", transform=transform, va="center", color="#8e8e8e", fontstyle="italic",
                 fontsize=9)
    elif key == "score":
        fig.text(x, y + 9, score_key, transform=transform, va="center", fontsize=11, fontweight="bold")


def _word_label(token, weight: float) -> str:
    if not token.used:
        return "[not read]"
    return f"[unk] {weight:.2f}" if not token.known else f"{weight:.2f}"


def _line(x1, x2, y, transform, colour="#8e8e8e", lw=1.5):
    from matplotlib.lines import Line2D
    return Line2D([x1, x2], [y, y], transform=transform, color=colour, lw=lw)


def save_attention_picture(answer, path: str, photo: Union[str, np.ndarray, None] = None, flag: str = "") -> dict:
    """Write the picture as a PNG (atomically; `flag` names the option that moves it); returns its size and where the image panel is:
    {"path", "width", "height", "image_box": [x0, y0, x1, y1] in PNG pixels from the top-left, "scale"}."""
    from PIL import Image

    rgb = attention_image(answer, photo)
    atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"), flag)
    scale = display_scale(answer.image.image_w, answer.image.image_h)
    panel = [0, 0, int(round(answer.image.image_w * scale)), int(round(answer.image.image_h * scale))]
    return {"path": path, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "image_box": panel,
            "scale": scale}
