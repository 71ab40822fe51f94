"""--ENGINE=auto on CPU picks the engine measured faster on this machine for this model: the
choice follows real timings, is cached per machine and model, and is said in one line."""
import json
import os
import time

import numpy as np
import paddle
import pytest

from mmnas.config import load_config
from mmnas.inference.predictor import (AUTO_MIN_BATCHES, ENGINE_CACHE_FILE, build_predictor, choose_engine,
                                       machine_key, model_key, read_engine_cache)
from mmnas.models import MMNasNet
from mmnas.models.export import sample_inputs

T, A = 30, 12


def tiny_model(hidden=None):
    paddle.seed(0)
    cfg = load_config("tiny").model
    if hidden:
        cfg.hidden_size, cfg.flat_mlp, cfg.flat_out = hidden, hidden, 2 * hidden
    model = MMNasNet(cfg, T, A)
    model.eval()
    return model


def busy(seconds: float) -> None:
    """Real CPU work for `seconds` (what a slower engine costs)."""
    end = time.perf_counter() + seconds
    a = np.ones((64, 64), np.float32)
    while time.perf_counter() < end:
        a = a @ a * 1e-3


class Engines:
    """Two real predictors of `model`, one of them doing `extra` seconds of real work per call;
    counts how often each engine is built and called."""

    def __init__(self, model, slower: str, extra: float = 0.2):
        self.model, self.slower, self.extra = model, slower, extra
        self.built = {"dygraph": 0, "inference": 0}
        self.calls = {"dygraph": 0, "inference": 0}

    def builders(self):
        return {name: (lambda name=name: self.build(name)) for name in ("dygraph", "inference")}

    def build(self, name):
        self.built[name] += 1
        run = build_predictor(self.model, "dygraph")  # both engines answer with the real model

        def call(*batch):
            self.calls[name] += 1
            if name == self.slower:
                busy(self.extra)
            return run(*batch)
        return call


@pytest.mark.parametrize("slower, faster", [("dygraph", "inference"), ("inference", "dygraph")])
def test_the_choice_follows_the_measurement_and_is_cached(tmp_path, slower, faster):
    model = tiny_model()
    sample = sample_inputs(4, 10, T)
    cache = str(tmp_path / ENGINE_CACHE_FILE)
    engines, lines = Engines(model, slower), []
    name, run = choose_engine(engines.builders(), sample, "machine/model-a", cache, repeats=2, say=lines.append)
    assert name == faster
    assert engines.calls == {"dygraph": 3, "inference": 3}  # one warm-up + 2 timed each
    entry = read_engine_cache(cache)["machine/model-a"]
    assert entry["engine"] == faster and entry["batch"] == [4, 10]
    assert entry["seconds"][slower] >= 0.2 > entry["seconds"][faster] and entry["cpu"]
    assert len(lines) == 1 and lines[0].startswith(f"engine auto: {faster}, the faster on this machine (")
    assert f"{slower} {entry['seconds'][slower]:.3f} s" in lines[0] and f"{faster} {entry['seconds'][faster]:.3f} s" in lines[0]
    np.testing.assert_allclose(run(*sample), build_predictor(model, "dygraph")(*sample), atol=1e-6)

    # the same machine and model again: the cached engine is built, nothing is timed, even if the
    # costs have changed since
    again, lines = Engines(model, faster), []
    name, _ = choose_engine(again.builders(), sample, "machine/model-a", cache, say=lines.append)
    assert name == faster and again.built == {faster: 1, slower: 0} and again.calls == {"dygraph": 0, "inference": 0}
    assert len(lines) == 1 and lines[0].startswith(f"engine auto: {faster} (") and "cached in" in lines[0]
    # another model: measured again (and now the other engine is the faster)
    other = Engines(model, faster)
    name, _ = choose_engine(other.builders(), sample, "machine/model-b", cache, say=[].append)
    assert name == slower and other.built == {"dygraph": 1, "inference": 1}
    assert set(read_engine_cache(cache)) == {"machine/model-a", "machine/model-b"}


def test_keys_follow_the_model_architecture_not_its_weights():
    a, b = tiny_model(), tiny_model()
    with paddle.no_grad():
        b.proj.weight.set_value(b.proj.weight * 2)
    assert model_key(a) == model_key(b) != model_key(tiny_model(hidden=16))
    assert machine_key(2) == machine_key(2) != machine_key(1)


def test_auto_through_build_predictor_measures_real_engines_once(tmp_path):
    """The real engines (the dygraph model, its Paddle Inference export) timed on a real batch and
    the choice cached under this machine's and this model's key; a small evaluation with nothing
    cached is not measured."""
    model = tiny_model()
    sample = sample_inputs(8, 12, T, seed=1)
    expected = build_predictor(model, "dygraph")(*sample)
    lines = []
    run = build_predictor(model, "auto", sample=sample, batches=AUTO_MIN_BATCHES, cache_dir=str(tmp_path),
                          say=lines.append)
    np.testing.assert_allclose(run(*sample), expected, atol=1e-4)
    cache = tmp_path / ENGINE_CACHE_FILE
    entries = json.loads(cache.read_text())
    key = f"{machine_key(int(os.environ['MKL_NUM_THREADS']))}/{model_key(model)}"
    assert list(entries) == [key]
    seconds = entries[key]["seconds"]
    assert set(seconds) == {"dygraph", "inference"} and entries[key]["engine"] == min(seconds, key=seconds.get)
    assert len(lines) == 1 and lines[0].startswith(f"engine auto: {entries[key]['engine']}, the faster on this machine")
    # (the cache's reuse: test_the_choice_follows_the_measurement_and_is_cached; a second export is slow)
    fresh = []
    small = build_predictor(model, "auto", sample=sample, batches=AUTO_MIN_BATCHES - 1,
                            cache_dir=str(tmp_path / "other"), say=fresh.append)
    assert fresh[0].startswith("engine auto: dygraph, unmeasured: 19 batch(es) are too few")
    assert not (tmp_path / "other").exists()
    np.testing.assert_allclose(small(*sample), expected, atol=1e-6)
