"""The attention picture of one answer: where the model looked, and which words it weighed.

The photo (or, without one, a grey canvas of the features' image_w x image_h with every region's
outline) is darkened everywhere except where the image attention lies: each pixel is lit by the
strongest region covering it, in proportion to sqrt(weight / largest weight), so that weaker
regions stay visible next to a dominant one. The strongest regions are outlined and labelled
"#rank weight". Under the picture: the top answers with their scores, then the question's words
on a colour scale of the language attention, each with its weight; a word outside the vocabulary
is struck through in grey on grey and marked [unk] with its weight (the model reads it as UNK),
a word past the 14th is grey italic and marked [not read].

The picture keeps the image's own size when its width is between MIN_WIDTH and MAX_SIDE pixels
(the image is scaled into that range otherwise), so the photo panel is image_w x image_h pixels
for COCO-sized images. Rendering uses matplotlib's Agg canvas directly (no pyplot state).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

MAX_SIDE = 1280  # the image panel's longer side at most this many pixels
MIN_WIDTH = 480  # ... and its width at least this many, so the words stay readable
OUTLINED = 3  # regions outlined and labelled
DPI = 100
OUTLINE_COLOURS = ("#ff2d95", "#00d7ff", "#ff9f0a", "#bf5af2", "#ffffff")  # on a black halo
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


class _Layout:
    """Pixel layout of the caption under the image (display coordinates measured from the top)."""
    MARGIN, GAP, LINE, ANSWER_LINE = 12, 8, 50, 34


def _text_width(fig, renderer, text: str, **kwargs) -> float:
    t = fig.text(0, 0, text, **kwargs)
    width = t.get_window_extent(renderer).width
    t.remove()
    return width


def attention_image(answer, photo: Union[str, np.ndarray, None] = None) -> np.ndarray:
    """The picture (see module docstring) as uint8 RGB [H, W, 3], e.g. for VisualDL's add_image."""
    from matplotlib import cm
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import IdentityTransform

    image = answer.image
    w, h = image.image_w, image.image_h
    scale = display_scale(w, h)
    panel_w, panel_h = int(round(w * scale)), int(round(h * scale))
    fig = Figure(dpi=DPI, figsize=(panel_w / DPI, 1.0))
    renderer = FigureCanvasAgg(fig).get_renderer()
    L = _Layout
    word_font, small_font = dict(fontsize=13), dict(fontsize=8)

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
    caption_h = L.ANSWER_LINE + L.LINE * (line + 1) + L.MARGIN
    total_h = panel_h + caption_h
    fig.set_size_inches(panel_w / DPI, total_h / DPI)
    px = IdentityTransform()  # display pixels, origin bottom-left

    def y_px(from_top):
        return total_h - from_top

    # ---- the image panel
    ax = fig.add_axes((0, caption_h / total_h, 1, panel_h / total_h))
    ax.set_axis_off()
    region_weights = np.where(answer.region_is_padding, 0.0, answer.image_attention)
    real = ~answer.region_is_padding
    if photo is not None:
        ax.imshow(read_photo(photo), extent=(0, w, h, 0), aspect="auto", interpolation="bilinear")
    else:
        ax.imshow(np.full((2, 2, 3), 0.86, dtype=np.float32), extent=(0, w, h, 0), aspect="auto")
    light = attention_light(image.boxes[real], region_weights[real], w, h,
                            max(1, panel_w // 2), max(1, panel_h // 2))
    veil = np.zeros(light.shape + (4,), dtype=np.float32)
    veil[..., 3] = 0.72 * (1.0 - light)
    ax.imshow(veil, extent=(0, w, h, 0), aspect="auto", interpolation="nearest")
    if photo is None:  # on the blank canvas, show where the regions are
        for x1, y1, x2, y2 in image.boxes[real]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.7, ec="#9a9a9a"))
    ranked = [r for r in answer.top_regions(OUTLINED) if region_weights[r] > 0]
    for rank, r in reversed(list(enumerate(ranked, 1))):  # the strongest drawn last, on top
        x1, y1, x2, y2 = image.boxes[r]
        colour = OUTLINE_COLOURS[(rank - 1) % len(OUTLINE_COLOURS)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=5.0, ec="black"))  # halo
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2.5, ec=colour))
        above = y1 * scale > 24  # the label sits on the box's top edge, outside it when there is room
        ax.text(x1, y1 - 3 / scale if above else y1 + 3 / scale, f"#{rank} {region_weights[r]:.2f}", fontsize=11,
                va="bottom" if above else "top", ha="left", color="black", fontweight="bold",
                bbox=dict(boxstyle="square,pad=0.2", fc=colour, ec="black", lw=1.0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)

    # ---- the caption: answers, then the weighted words
    y = y_px(panel_h + L.ANSWER_LINE / 2 + 2)
    first = f"{answer.answers[0]}  {answer.scores[0]:.2f}"
    fig.text(L.MARGIN, y, first, transform=px, fontsize=14, fontweight="bold", va="center")
    rest = "   ".join(f"{a}  {s:.2f}" for a, s in zip(answer.answers[1:], answer.scores[1:]))
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

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return rgb


def _word_label(token, weight: float) -> str:
    if not token.used:
        return "[not read]"
    return f"[unk] {weight:.2f}" if not token.known else f"{weight:.2f}"


def _line(x1, x2, y, transform):
    from matplotlib.lines import Line2D
    return Line2D([x1, x2], [y, y], transform=transform, color="#8e8e8e", lw=1.5)


def save_attention_picture(answer, path: str, photo: Union[str, np.ndarray, None] = None) -> dict:
    """Write the picture as a PNG (atomically); returns its size and where the image panel is:
    {"path", "width", "height", "image_box": [x0, y0, x1, y1] in PNG pixels from the top-left, "scale"}."""
    from PIL import Image

    rgb = attention_image(answer, photo)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)
    scale = display_scale(answer.image.image_w, answer.image.image_h)
    panel = [0, 0, int(round(answer.image.image_w * scale)), int(round(answer.image.image_h * scale))]
    return {"path": path, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "image_box": panel,
            "scale": scale}
