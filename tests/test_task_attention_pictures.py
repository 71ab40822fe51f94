"""--RUN=predict's attention on the grounding and matching models (the tiny one-epoch models of
tests/test_demo_tasks.py): the head's word weights are a distribution over the words read and 0 on
padding, the grounding picture's chosen box is predict's, and the matching picture of the best
pair weighs the real regions and words of that pair."""
import json
import os

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from mmnas import cli
from mmnas.config import load_config
from mmnas.engine.predict import read_image_features
from mmnas.engine.predict_grounding import Grounder, box_figure, top_picks
from mmnas.engine.predict_matching import Matcher
from test_demo_tasks import grounding, matching  # noqa: F401 (the shared trained fixtures)


def run_predict(model, feats, query, out, picture):
    """--RUN=predict --TOPK=3 of a trained fixture, writing JSON to `out` and the picture to `picture`."""
    return cli.main(["--RUN=predict", f"--MODEL={model.yml}", f"--CKPT_PATH={model.params}", f"--FEATS={feats}",
                     f"--QUESTION={query}", "--TOPK=3", f"--OUT={out}", f"--PICTURE={picture}",
                     f"--RESULTS_DIR={model.results}"])


def test_grounding_picture_shades_the_words_and_draws_predicts_box(grounding, tmp_path, capsys):
    cfg = load_config(grounding.yml)
    name = sorted(n for n in os.listdir(grounding.feats_dir) if n.endswith(".npz"))[0]
    feats = os.path.join(grounding.feats_dir, name)
    expression = "the small blue ball on the left"
    out, picture = tmp_path / "g.json", tmp_path / "g.png"
    assert run_predict(grounding, feats, expression, out, picture) == 0
    capsys.readouterr()
    assert picture.stat().st_size > 0
    grounder = Grounder(cfg, grounding.params)
    image = read_image_features(feats, cfg.model.feat_size)
    words, _, picks = grounder.ground(image, expression)
    weights = picks["word_weights"]
    read = min(len(words), grounder.max_token - 1)  # the last position is always padding
    assert weights.shape == (grounder.max_token,)
    np.testing.assert_allclose(weights[:read].sum(), 1.0, atol=1e-5)
    assert (weights[:read] > 0).all() and (weights[read:] < 1e-12).all()
    # the figure's red box is the chosen box of predict's JSON
    figure = box_figure(image, top_picks(picks, 3), expression)
    red = [p for p in figure.axes[0].patches if isinstance(p, Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(red) == 1
    x1, y1 = red[0].get_xy()
    chosen = json.load(open(out))["picks"][0]["box"]
    np.testing.assert_allclose([x1, y1, x1 + red[0].get_width(), y1 + red[0].get_height()], chosen, atol=0.01)
    shaded = [t.get_text() for t in figure.axes[0].texts if t.get_text().split()[0] in words]
    assert len(shaded) == len(words)


def test_matching_picture_is_of_the_best_pair_with_its_attention(matching, tmp_path, capsys):
    cfg = load_config(matching.yml)
    caption = "a red cup and a blue dog"
    out, picture = tmp_path / "m.json", tmp_path / "m.png"
    assert run_predict(matching, matching.feats_dir, caption, out, picture) == 0
    capsys.readouterr()
    result = json.load(open(out))
    assert result["picture"] == str(picture) and picture.stat().st_size > 0
    best = result["ranked"][0]
    image = read_image_features(best["feats"], cfg.model.feat_size)
    pair = Matcher(cfg, matching.params).pair_attention(image, caption)
    assert pair.scores[0] == pytest.approx(best["score"], abs=1e-6)
    real = ~pair.region_is_padding
    np.testing.assert_allclose(pair.image_attention[real].sum(), 1.0, atol=1e-5)
    assert (pair.image_attention[~real] < 1e-12).all()
    words = sum(t.used for t in pair.tokens)
    np.testing.assert_allclose(pair.lang_attention[:words].sum(), 1.0, atol=1e-5)
    assert (pair.lang_attention[words:] < 1e-12).all()

    from mmnas.engine.attention_picture import legend_entries
    score_line = dict(legend_entries(pair))["score"]
    assert score_line.startswith("the number beside 'match' is the match probability"), score_line
