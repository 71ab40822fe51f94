"""The attention picture reads on its own: region labels never cover one another (place_labels,
and in a drawn picture with three nearly identical boxes), outlines contrast with a dark photo,
dark things stay apart where the model did not look, and a legend says what the labels, word
colours, word marks and scores mean."""
import itertools

import numpy as np
import pytest

from mmnas.engine.attention_picture import (LABEL_GAP, dim_unattended, draw_attention_picture, legend_entries,
                                            place_labels)
from mmnas.engine.predict import Answer, ImageFeatures, Token

BACKGROUND, SOFA, DOG, WINDOW = (18, 18, 18), (40, 30, 25), (10, 10, 12), (200, 200, 190)


def dark_photo():
    """640 x 480, nearly black, with a dark sofa (bottom left), a black dog (right) and a window."""
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[:] = BACKGROUND
    photo[300:460, 40:260] = SOFA
    photo[120:300, 380:600] = DOG
    photo[60:140, 100:220] = WINDOW
    return photo


def dark_answer(kind="sigmoid", words="what colour is the zorbly dog"):
    # three nearly identical boxes around the dog (the labels compete for one corner), the sofa,
    # the window, the whole image
    boxes = np.array([[380, 120, 600, 300], [384, 124, 596, 296], [376, 116, 598, 298],
                      [40, 300, 260, 460], [100, 60, 220, 140], [0, 0, 639, 479]], np.float32)
    tokens = [Token(w, w != "zorbly", i < 14) for i, w in enumerate(words.split())]
    lang = np.zeros(14)
    lang[:min(len(tokens), 14)] = 1.0 / min(len(tokens), 14)
    image = ImageFeatures(np.ones((6, 2048), np.float32), boxes, 640, 480)
    return Answer(words + "?", ["black", "brown", "white"], [0.83, 0.12, 0.05], tokens, lang,
                  np.array([0.31, 0.27, 0.22, 0.1, 0.06, 0.04]), image, score_kind=kind)


def overlaps(a, b, gap=0.0):
    return a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap


def test_labels_of_identical_boxes_do_not_overlap_and_stay_in_the_panel():
    box = (100.0, 0.0, 300.0, 200.0)  # at the panel's top edge: "above the box" is outside the panel
    rects = place_labels([box] * 5, [(70, 20)] * 5, 640, 480)
    for a, b in itertools.combinations(rects, 2):
        assert not overlaps(a, b, LABEL_GAP - 1e-9), (a, b)
    for x, y, w, h in rects:
        assert 0 <= x <= 640 - w and 0 <= y <= 480 - h
    assert rects[0] == (100.0, 0.0, 70.0, 20.0)  # the strongest: its first choice, above the box, moved in
    # four corners of the box are free for the first four; the fifth goes to the nearest free spot
    corners = {(x, y) for x in (100.0, 230.0) for y in (0.0, 1.0, 200.0, 179.0)}
    assert sum((x, y) in corners for x, y, _, _ in rects) == 4


def test_labels_of_random_crowded_boxes_never_overlap():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 6))
        x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 200, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, 300, n), y1 + rng.uniform(5, 250, n)], axis=1)
        sizes = [(float(rng.uniform(40, 90)), 20.0) for _ in range(n)]
        rects = place_labels(boxes, sizes, 480, 360)
        for a, b in itertools.combinations(rects, 2):
            assert not overlaps(a, b, LABEL_GAP - 1e-9)
        assert all(0 <= x <= 480 - w and 0 <= y <= 360 - h for x, y, w, h in rects)


@pytest.fixture(scope="module")
def drawn():
    return draw_attention_picture(dark_answer(), dark_photo())


def luminance(rgb):
    return rgb.astype(np.float64) @ [0.299, 0.587, 0.114]


def test_drawn_labels_do_not_overlap_and_show_their_colour(drawn):
    rgb, layout = drawn
    assert [text for text, _ in layout.labels] == ["#1 0.31", "#2 0.27", "#3 0.22"]
    rects = [rect for _, rect in layout.labels]
    for a, b in itertools.combinations(rects, 2):
        assert not overlaps(a, b)
    for (text, (x, y, w, h)), colour in zip(layout.labels, [(0xff, 0x2d, 0x95), (0x00, 0xd7, 0xff), (0xff, 0x9f, 0x0a)]):
        inner = rgb[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2].reshape(-1, 3)
        share = np.mean(np.all(np.abs(inner.astype(int) - colour) <= 8, axis=1))
        assert share > 0.4, (text, share)  # the chip is drawn where the layout says, not covered


def test_outlines_contrast_with_a_dark_photo(drawn):
    rgb, layout = drawn
    assert layout.scale == 1.0 and layout.image_box == [0, 0, 640, 480]
    lum = luminance(rgb)
    # across the left edge of the strongest box (x = 380), below the labels
    across = lum[250, 370:391]
    background = lum[250, 330:350]  # dark photo, outside every box
    assert background.max() < 70
    assert across.max() > 200  # a light stroke: visible on the dark photo
    assert across.max() - background.max() > 130
    # and a dark stroke next to it, for light photos
    assert across.min() < 30


def test_dark_things_stay_apart_where_the_model_did_not_look():
    light = np.zeros((2, 2), np.float32)
    rgb = np.array([[BACKGROUND, SOFA], [DOG, WINDOW]], np.float32).reshape(2, 2, 3) / 255
    dimmed = luminance(dim_unattended(rgb, light) * 255)
    original = luminance(rgb * 255)
    # most of the difference between dark things is kept; a black overlay of 72% (the former
    # veil) kept 0.28 of it: 4 and 2 grey levels here
    assert dimmed[0, 1] - dimmed[0, 0] > 0.8 * (original[0, 1] - original[0, 0])
    assert dimmed[0, 0] - dimmed[1, 0] > 0.8 * (original[0, 0] - original[1, 0])
    assert dimmed[1, 1] < original[1, 1] - 40  # bright things are dimmed
    lit = dim_unattended(rgb, np.ones((2, 2), np.float32))
    np.testing.assert_allclose(lit, rgb)  # where the model looked, the photo itself


def test_the_legend_says_what_everything_means(drawn):
    rgb, layout = drawn
    legend = layout.legend
    assert legend[0].startswith("the region the model looked at most (#1, then #2, #3) and its share")
    assert legend[1].startswith("word colour: how much the model weighed the word (language attention")
    assert legend[2] == "[unk]: not in the model's vocabulary, read as the unknown word."
    assert legend[3].startswith("the numbers beside the answers are scores, not probabilities: one sigmoid")
    assert len(legend) == 4  # no [not read] line: every word is read
    # the legend is drawn under the words: dark text pixels in the last rows above the margin
    bottom = luminance(rgb[layout.height - 60:layout.height - 10, 80:])
    assert (bottom < 100).sum() > 200
    # the legend's #1 chip is the #1 label's colour
    assert np.any(np.all(rgb[layout.image_box[3]:] == (0xff, 0x2d, 0x95), axis=-1))


def test_legend_for_softmax_scores_and_words_past_the_last_read():
    words = "is the dog on the left of the big red car near the old tree by the road"
    entries = dict((key, text) for key, text in legend_entries(dark_answer("softmax", words)))
    assert entries["score"] == ("the numbers beside the answers are probabilities: the softmax of the logits "
                                "over all answers, summing to 100%.")
    assert entries["cut"] == "[not read]: past the 14th word, the last the model reads."
