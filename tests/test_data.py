"""Data pipeline: vocabularies against hand-computed expectations, every bad input's error,
the vocabulary cache, preload == lazy reading, batch padding, word vectors."""
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from mmnas.data import vocab as vocab_mod
from mmnas.data.dataset import VQADataset
from mmnas.data.regions import collate_batch
from mmnas.data.features import DataError, check_raw_files, load_npz, read_box_count
from mmnas.data.vocab import (Vocab, answer_scores, build_answer_vocab, build_token_vocab, build_vocab,
                              encode_question, tokenize)
from mmnas.data.word_vectors import load_word_vectors, read_glove

# ----------------------------------------------------------------------------- tiny dataset

FEAT_FOLDERS = {"train2014": {1: 3, 2: 5, 3: 4}, "val2014": {4: 6, 5: 2}, "test2015": {6: 3, 7: 1}}
RAW = {
    "train_q": "raw/v2_OpenEnded_mscoco_train2014_questions.json",
    "val_q": "raw/v2_OpenEnded_mscoco_val2014_questions.json",
    "test_q": "raw/v2_OpenEnded_mscoco_test2015_questions.json",
    "vg_q": "raw/VG_questions.json",
    "train_a": "raw/v2_mscoco_train2014_annotations.json",
    "val_a": "raw/v2_mscoco_val2014_annotations.json",
    "vg_a": "raw/VG_annotations.json",
}


def write_npz(path, n, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0, 300, size=(n, 2))
    arrays = {
        "x": rng.random((2048, n), dtype=np.float32),  # channels first, as on disk
        "bbox": np.concatenate([x1y1, x1y1 + rng.uniform(1, 200, size=(n, 2))], axis=1).astype(np.float32),
        "image_h": np.int64(480), "image_w": np.int64(640), "num_bbox": np.int64(n),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def ann(qid, image_id, mc, human):
    return {"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": mc,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(human)]}


def make_root(tmp_path):
    """<tmp>/data/vqa in the real layout: 10 train, 4 val, 3 test, 2 vg questions, 7 images."""
    root = tmp_path / "data"
    for folder, counts in FEAT_FOLDERS.items():
        os.makedirs(root / "vqa" / "feats" / folder)
        for image_id, n in counts.items():
            write_npz(root / "vqa" / "feats" / folder / f"COCO_{folder}_{image_id:012d}.jpg.npz", n, seed=image_id)
    os.makedirs(root / "vqa" / "raw")
    texts = ["What color is the cat?", "Is it a man's hat?", "How many dogs?", "What is on the T-shirt?",
             "Is this a cat/dog?", "Where is he?", "What color are the dogs?", "Is it on?", "How many cats?", "Why?"]
    train_q = [{"image_id": 1 + i % 3, "question": t, "question_id": 100 + i} for i, t in enumerate(texts)]
    train_a = [ann(100 + i, 1 + i % 3, "yes" if i % 2 else "2", ["yes"] * i + ["no"] * (10 - i)) for i in range(10)]
    val_q = [{"image_id": 4 + i % 2, "question": t, "question_id": 200 + i}
             for i, t in enumerate(["What sport is this?", "Is the sky blue?", "What brand?", "Who is here?"])]
    val_a = [ann(200 + i, 4 + i % 2, "Two", ["two"] * 3 + ["2"] * 2 + ["no"] * 5) for i in range(4)]
    test_q = [{"image_id": 6 + i % 2, "question": t, "question_id": 400 + i}
              for i, t in enumerate(["Is it raining?", "What animal is this?", "How old is the tennis player?"])]
    vg_q = [{"image_id": 1, "question": "What is the zebra eating?", "question_id": 900},
            {"image_id": 5, "question": "Where is the giraffe standing?", "question_id": 901}]
    vg_a = [ann(900, 1, "grass", ["grass"] * 10), ann(901, 5, "field", ["field"] * 10)]
    for key, payload in (("train_q", {"questions": train_q}), ("val_q", {"questions": val_q}),
                         ("test_q", {"questions": test_q}), ("vg_q", {"questions": vg_q}),
                         ("train_a", {"annotations": train_a}), ("val_a", {"annotations": val_a}),
                         ("vg_a", {"annotations": vg_a})):
        (root / "vqa" / RAW[key]).write_text(json.dumps(payload))
    return str(root)


def tiny_vocab(root):
    questions = [json.load(open(os.path.join(root, "vqa", RAW[k])))["questions"]
                 for k in ("train_q", "val_q", "test_q", "vg_q")]
    ans_to_ix = {"2": 0, "yes": 1, "no": 2}
    return Vocab(build_token_vocab(questions), ans_to_ix, {v: k for k, v in ans_to_ix.items()})


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


# ----------------------------------------------------------------------------- tokens

def test_tokenize_punctuation_hyphens_slashes_apostrophes():
    assert tokenize("What's in the man's LEFT-hand?") == ["whats", "in", "the", "mans", "left", "hand"]
    assert tokenize('Is this a cat/dog (or "both")!') == ["is", "this", "a", "cat", "dog", "or", "both"]
    assert tokenize("time: 3.30; #1 *big*, ok") == ["time", "330", "1", "big", "ok"]
    assert tokenize("  a--b  / c ") == ["a", "b", "c"]


def test_token_vocab_order_and_specials():
    train = [{"question": "What is it?"}, {"question": "Is it red?"}]
    val = [{"question": "what color"}]
    test = [{"question": "Red/blue bus"}]
    vg = [{"question": "Man's bus"}]
    vocab = build_token_vocab([train, val, test, vg])
    assert vocab == {"PAD": 0, "UNK": 1, "CLS": 2, "what": 3, "is": 4, "it": 5, "red": 6, "color": 7,
                     "blue": 8, "bus": 9, "mans": 10}


def test_encode_question_cut_pad_unknown():
    token_to_ix = {"PAD": 0, "UNK": 1, "CLS": 2, "what": 3, "is": 4}
    ids = encode_question("What is zzz?", token_to_ix)
    assert ids.dtype == np.int64 and ids.shape == (14,)
    assert ids.tolist() == [3, 4, 1] + [0] * 11
    long = encode_question(" ".join(["what"] * 13 + ["is", "is", "is"]), token_to_ix)
    assert long.tolist() == [3] * 13 + [4]


# ----------------------------------------------------------------------------- answers

def mc(*answers):
    return [{"multiple_choice_answer": a} for a in answers]


def test_answer_vocab_threshold_order_normalisation():
    # "1,000" and "1000" are one answer (9 in all); "Two" and "2" one answer (9); "cat" 8 -> dropped;
    # "yes" 9 appearing first in val -> after the train answers.
    train = mc(*(["1,000"] * 5 + ["cat"] * 8 + ["Two"] * 4 + ["dog"]))
    val = mc(*(["yes"] * 9 + ["2"] * 5 + ["1000"] * 4 + ["dog"] * 8))
    ans_to_ix, ix_to_ans = build_answer_vocab([train, val])
    assert ans_to_ix == {"1000": 0, "2": 1, "dog": 2, "yes": 3}
    assert ix_to_ans == {0: "1000", 1: "2", 2: "dog", 3: "yes"}


@pytest.mark.parametrize("loss,expected", [("bce", [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]),
                                           ("kld", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])])
def test_answer_scores_by_match_count(loss, expected):
    ans_to_ix = {"m0": 0, "m1": 1, "m2": 2, "m3": 3, "m4": 4, "m5": 5, "2": 6}
    # m1..m5 matched 1..5 times would need 15 answers; score each count separately instead
    for count, want in enumerate(expected):
        human = [{"answer": "m%d" % count}] * count + [{"answer": "other"}] * (10 - count)
        scores = answer_scores(human, ans_to_ix, loss)
        assert scores.dtype == np.float32 and scores.shape == (7,)
        assert scores[count] == pytest.approx(want)
        assert np.count_nonzero(scores) == (1 if count else 0)
    # normalisation applies to the human answers: "two", "Two", "2" all count for "2"
    scores = answer_scores(["two", "Two", "2"] + ["x"] * 7, ans_to_ix, loss)
    assert scores[6] == pytest.approx(expected[3])


# ----------------------------------------------------------------------------- build_vocab + cache

def test_build_vocab_files_order_and_cache(root, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    vocab = build_vocab(root, cache, progress=False)
    words = list(vocab.token_to_ix)
    # first words of train, then the first new val, test and vg words come in that order
    assert words[:7] == ["PAD", "UNK", "CLS", "what", "color", "is", "the"]
    assert words.index("sport") < words.index("raining") < words.index("zebra")
    # "2" appears 5x in train + 4x "Two" in val = 9 > 8; "yes" only 5x
    assert vocab.ans_to_ix == {"2": 0} and vocab.ix_to_ans == {0: "2"}
    assert vocab.token_size == len(words) and vocab.answer_size == 1
    assert len(os.listdir(cache)) == 1 and os.listdir(cache)[0].startswith("vocab_")

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(vocab_mod, "build_token_vocab", fail)
    monkeypatch.setattr(vocab_mod, "build_answer_vocab", fail)
    again = build_vocab(root, cache, progress=False)
    assert again == vocab

    # an input file changes -> the key changes -> rebuilt
    path = os.path.join(root, "vqa", RAW["vg_q"])
    os.utime(path, ns=(1, 1))
    with pytest.raises(AssertionError, match="cache should have been used"):
        build_vocab(root, cache, progress=False)


@pytest.mark.parametrize("style", ["openvqa", "dict"])
def test_build_vocab_explicit_answer_dict(root, tmp_path, style):
    ans_to_ix = {"yes": 0, "no": 1, "2": 2}
    payload = [ans_to_ix, {str(v): k for k, v in ans_to_ix.items()}] if style == "openvqa" else {"ans_to_ix": ans_to_ix}
    path = tmp_path / "answer_dict.json"
    path.write_text(json.dumps(payload))
    vocab = build_vocab(root, str(tmp_path / "cache"), answer_dict=str(path), progress=False)
    assert vocab.ans_to_ix == ans_to_ix and vocab.ix_to_ans == {0: "yes", 1: "no", 2: "2"}


# ----------------------------------------------------------------------------- bad inputs

def test_missing_raw_files_all_listed(root):
    for key in ("train_a", "vg_q"):
        os.remove(os.path.join(root, "vqa", RAW[key]))
    with pytest.raises(DataError) as err:
        VQADataset(root, "train+val+vg", tiny_vocab_stub(), progress=False)
    msg = str(err.value)
    assert "2 VQA-v2 file(s)" in msg and RAW["train_a"].split("/")[-1] in msg and "VG_questions.json" in msg
    assert 'docs/data.md, section "VQA-v2"' in msg
    with pytest.raises(DataError, match=r"(?s)2 VQA-v2.*train2014_annotations.json.*nothing.json"):
        check_raw_files(root, [RAW["train_a"], RAW["vg_a"], "raw/nothing.json"])
    assert check_raw_files(root, [RAW["vg_a"]]) == [os.path.abspath(os.path.join(root, "vqa", RAW["vg_a"]))]


def tiny_vocab_stub():
    return Vocab({"PAD": 0, "UNK": 1, "CLS": 2}, {"yes": 0}, {0: "yes"})


def test_missing_image_feature_error_and_drop(root):
    os.remove(os.path.join(root, "vqa", "feats", "train2014", "COCO_train2014_000000000002.jpg.npz"))
    vocab = tiny_vocab(root)
    with pytest.raises(DataError) as err:
        VQADataset(root, "train", vocab, progress=False)
    msg = str(err.value)
    assert "3 of 10 questions" in msg and "question 101 (image 2)" in msg
    assert "drop_missing_images=True" in msg and "--DROP_MISSING" in msg and "train2014" in msg
    with pytest.warns(UserWarning, match="3 of 10 questions"):
        dataset = VQADataset(root, "train", vocab, drop_missing_images=True, progress=False)
    assert dataset.question_ids == [100, 102, 103, 105, 106, 108, 109]
    assert [a["question_id"] for a in dataset.annotations] == dataset.question_ids


def test_malformed_json_named_with_position(root):
    path = os.path.join(root, "vqa", RAW["val_q"])
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[:-10])  # truncated
    with pytest.raises(DataError, match=r"val2014_questions\.json is not valid JSON.*line 1 column"):
        VQADataset(root, "val", tiny_vocab_stub(), progress=False)
    with pytest.raises(DataError, match="val2014_questions.json is not valid JSON"):
        build_vocab(root, os.path.join(root, "cache"), progress=False)


def test_question_annotation_mismatch(root):
    path = os.path.join(root, "vqa", RAW["val_a"])
    anns = json.load(open(path))
    anns["annotations"] = anns["annotations"][:-1]
    json.dump(anns, open(path, "w"))
    with pytest.raises(DataError, match=r"1 question\(s\) without annotation \(first ids \[203\]\)"):
        VQADataset(root, "val", tiny_vocab_stub(), progress=False)


@pytest.mark.parametrize("case,overrides,pattern", [
    ("no_x", {"x": None}, r"key 'x' is missing"),
    ("no_bbox", {"bbox": None}, r"key 'bbox' is missing"),
    ("n_mismatch", {"bbox": np.zeros((4, 4), np.float32)}, r"'bbox' has shape \[4, 4\] but 'x' has n=5"),
    ("channels_last", {"x": np.zeros((5, 2048), np.float32)}, r"expected \[2048, n\]"),
])
def test_bad_npz_structure(tmp_path, case, overrides, pattern):
    path = tmp_path / f"COCO_train2014_{case}.jpg.npz"
    write_npz(path, 5, **overrides)
    with pytest.raises(DataError, match=pattern) as err:
        load_npz(str(path))
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("key,row,value,pattern", [
    ("x", 7, np.nan, r"'x' holds 1 NaN and 0 inf"),
    ("x", 3, np.inf, r"'x' holds 0 NaN and 1 inf"),
    ("bbox", 1, np.nan, r"'bbox' holds 1 NaN"),
    ("bbox", 2, "swap_x", r"1 box\(es\) have x2 < x1 or y2 < y1 \(first: row 2"),
    ("bbox", 0, "swap_y", r"x2 < x1 or y2 < y1 \(first: row 0"),
])
def test_bad_npz_values(tmp_path, key, row, value, pattern):
    path = tmp_path / "COCO_val2014_000000000001.jpg.npz"
    write_npz(path, 5)
    with np.load(path) as npz:
        arrays = dict(npz)
    if value == "swap_x":
        arrays["bbox"][row, [0, 2]] = [200, 100]
    elif value == "swap_y":
        arrays["bbox"][row, [1, 3]] = [50, 40]
    else:
        arrays[key].flat[row] = value
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=pattern) as err:
        load_npz(str(path))
    assert str(path) in str(err.value)


def test_truncated_npz(tmp_path):
    path = tmp_path / "COCO_val2014_000000000001.jpg.npz"
    write_npz(path, 5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or not an .npz") as err:
        load_npz(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="truncated or not an .npz"):
        read_box_count(str(path))


def test_bad_feature_file_found_by_preload(root):
    path = os.path.join(root, "vqa", "feats", "val2014", "COCO_val2014_000000000005.jpg.npz")
    write_npz(path, 2, bbox=np.array([[0, 0, 10, 10], [5, 5, np.inf, 9]], np.float32))
    with pytest.raises(DataError, match="COCO_val2014_000000000005.jpg.npz.*'bbox' holds 0 NaN and 1 inf"):
        VQADataset(root, "val", tiny_vocab(root), preload=True, progress=False)


# ----------------------------------------------------------------------------- dataset

def test_read_npz_transposes_channels_first(tmp_path):
    path = tmp_path / "COCO_train2014_000000000001.jpg.npz"
    write_npz(path, 4)
    region_feats, boxes = load_npz(str(path))
    raw = np.load(path)
    assert region_feats.shape == (4, 2048) and region_feats.dtype == np.float32
    np.testing.assert_array_equal(region_feats, raw["x"].T)
    np.testing.assert_array_equal(boxes, raw["bbox"])
    assert read_box_count(str(path)) == 4


@pytest.mark.parametrize("split", ["train", "train+val+vg", "val", "test"])
def test_preload_and_lazy_items_identical(root, split):
    vocab = tiny_vocab(root)
    lazy = VQADataset(root, split, vocab, progress=False)
    eager = VQADataset(root, split, vocab, preload=True, preload_workers=3, progress=False)
    assert len(lazy) == len(eager) and lazy.question_ids == eager.question_ids
    assert eager.num_images < len(eager) or split == "test"  # features are shared per image
    image_counts = {eager.image_path(i): n for i, n in enumerate(eager.box_counts)}
    assert eager.preloaded_bytes == sum(4 * (2048 + 4) * n for n in image_counts.values())  # float32 feats + boxes
    np.testing.assert_array_equal(lazy.box_counts, eager.box_counts)
    assert [lazy.box_count(i) for i in range(len(lazy))] == eager.box_counts.tolist()
    for i in range(len(lazy)):
        a, b = lazy[i], eager[i]
        assert len(a) == 5
        for x, y in zip(a, b):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        region_feats, boxes, question_ids, scores, index = a
        assert region_feats.shape == (lazy.box_counts[i], 2048) and boxes.shape == (lazy.box_counts[i], 4)
        assert question_ids.shape == (14,) and question_ids.dtype == np.int64
        assert scores.shape == (3,) and scores.dtype == np.float32 and index == i and index.dtype == np.int64


def test_split_contents(root):
    vocab = tiny_vocab(root)
    full = VQADataset(root, "train+val+vg", vocab, progress=False)
    assert full.question_ids == list(range(100, 110)) + list(range(200, 204)) + [900, 901]
    assert full.has_answers and len(full.annotations) == 16
    # vg images live in the train2014 and val2014 folders
    assert full.image_path(14).endswith("COCO_train2014_000000000001.jpg.npz")
    assert full.image_path(15).endswith("COCO_val2014_000000000005.jpg.npz")
    assert full.box_counts.tolist() == [3, 5, 4] * 3 + [3] + [6, 2, 6, 2] + [3, 2]
    # train item 4: "Is this a cat/dog?" with 4 "yes" of 10 -> yes 1.0, no (6) 1.0
    _, _, question_ids, scores, _ = full[4]
    t = vocab.token_to_ix
    assert question_ids[:5].tolist() == [t["is"], t["this"], t["a"], t["cat"], t["dog"]]
    np.testing.assert_allclose(scores, [0.0, 1.0, 1.0])
    # val: 3 x "two" + 2 x "2" = 5 matches of "2" -> 1.0; kld -> 0.5
    assert full[10][3][0] == pytest.approx(1.0)
    kld = VQADataset(root, "val", vocab, loss="kld", progress=False)
    np.testing.assert_allclose(kld[0][3], [0.5, 0.0, 0.5])

    test = VQADataset(root, "test", vocab, progress=False)
    assert not test.has_answers and test.annotations is None and test.question_ids == [400, 401, 402]
    assert not test[0][3].any()
    with pytest.raises(DataError, match="unknown split"):
        VQADataset(root, "train+test", vocab, progress=False)


LONG_QUESTION = "Is the small red cat on the left of the big blue dog near the old tree?"  # 16 words


def config_with(tmp_path, root, body=""):
    """The tiny config plus `body` (YAML), reading `root`, results (and the vocabulary cache) under tmp_path."""
    from mmnas.config import CONFIG_DIR, load_config
    path = tmp_path / "cfg.yml"
    path.write_text(f"base: {os.path.join(CONFIG_DIR, 'vqa', 'mmnasnet_tiny.yml')}\n{body}")
    cfg = load_config(str(path))
    cfg.data.data_root, cfg.results_dir = root, str(tmp_path / "results")
    return cfg


@pytest.mark.parametrize("body, width", [("", 14), ("model:\n  max_token: 8\n", 8), ("model:\n  max_token: 20\n", 20)])
def test_model_max_token_is_the_question_width(root, tmp_path, body, width):
    """model.max_token decides the question_ids of the dataset: a 16-word question is cut to its
    first `width` word ids (or zero-padded to 20); the default 14 is openvqa's cut."""
    from mmnas.data.datasets import dataset_spec
    from mmnas.data.regions import collate_batch
    q_path = os.path.join(root, "vqa", RAW["val_q"])
    questions = json.load(open(q_path))
    questions["questions"][0]["question"] = LONG_QUESTION
    json.dump(questions, open(q_path, "w"))
    cfg = config_with(tmp_path, root, body)
    spec = dataset_spec("vqa")
    vocab = spec.build_vocab(cfg, False)
    assert vocab.max_token == width  # what training writes into vocab.json for predict
    dataset = spec.open(cfg, "val", vocab, False)
    words = tokenize(LONG_QUESTION)
    expected = [vocab.token_to_ix[w] for w in words[:width]] + [0] * max(0, width - len(words))
    assert dataset[0][2].tolist() == expected
    assert collate_batch([dataset[i] for i in range(4)])[2].shape == (4, width)
    if width == 14:  # bit-identical to the dataset before model.max_token was read
        plain = VQADataset(root, "val", build_vocab(root, str(tmp_path / "plain"), progress=False), progress=False)
        assert all(np.array_equal(plain[i][2], dataset[i][2]) for i in range(len(plain)))


def test_vocabulary_of_another_question_length_is_refused(root, tmp_path):
    from mmnas.data.datasets import dataset_spec
    cfg = config_with(tmp_path, root, "model:\n  max_token: 8\n")
    vocab = build_vocab(root, str(tmp_path / "cache"), progress=False)  # 14, not through the config
    with pytest.raises(DataError, match=r"cuts questions at 14 words but model.max_token is 8"):
        dataset_spec("vqa").open(cfg, "val", vocab, False)


def test_data_cache_dir_from_yaml_holds_the_vocabulary(root, tmp_path):
    """data.cache_dir given in a YAML is where the vocabulary cache lands (the command line no
    longer overwrites it); left out, the cache is <results_dir>/cache."""
    from mmnas import cli
    from mmnas.config import CONFIG_DIR
    from mmnas.data.datasets import dataset_spec
    results, yaml_cache = tmp_path / "results", tmp_path / "my_vocab_cache"
    configured = tmp_path / "with.yml"
    configured.write_text(f"base: {os.path.join(CONFIG_DIR, 'vqa', 'mmnasnet_tiny.yml')}\n"
                          f"data:\n  cache_dir: {yaml_cache}\n")

    def vocab_files(folder):
        return [n for n in os.listdir(folder) if n.startswith("vocab_")] if os.path.isdir(folder) else []

    def build_through_the_command_line(model):
        cfg = cli.config_from_args(cli.build_parser().parse_args(
            ["--RUN=train", f"--MODEL={model}", f"--DATA_ROOT={root}", f"--RESULTS_DIR={results}", "--NW=0"]))
        dataset_spec(cfg.data.dataset).build_vocab(cfg, False)  # what training and --RUN=val do first
        return cfg

    assert build_through_the_command_line(str(configured)).cache_dir == str(yaml_cache)
    assert len(vocab_files(yaml_cache)) == 1 and vocab_files(results / "cache") == []
    assert build_through_the_command_line("tiny").cache_dir == str(results / "cache")
    assert len(vocab_files(results / "cache")) == 1


def test_collate_pads_to_batch_max(root):
    dataset = VQADataset(root, "val", tiny_vocab(root), progress=False)  # n = 6, 2, 6, 2
    items = [dataset[1], dataset[0], dataset[3]]
    region_feats, boxes, question_ids, scores, index = collate_batch(items)
    assert region_feats.shape == (3, 6, 2048) and boxes.shape == (3, 6, 4)
    assert question_ids.shape == (3, 14) and scores.shape == (3, 3) and index.tolist() == [1, 0, 3]
    assert region_feats.dtype == np.float32 and question_ids.dtype == np.int64 and index.dtype == np.int64
    np.testing.assert_array_equal(region_feats[0, :2], items[0][0])
    np.testing.assert_array_equal(boxes[0, :2], items[0][1])
    assert not region_feats[0, 2:].any() and not boxes[0, 2:].any() and not region_feats[2, 2:].any()
    np.testing.assert_array_equal(region_feats[1], items[1][0])
    # no padding row is mistaken for a region, and no region looks like padding
    assert (np.abs(region_feats).sum(-1) > 0).sum(1).tolist() == [2, 6, 2]


def test_paddle_dataloader(root):
    import paddle
    dataset = VQADataset(root, "train", tiny_vocab(root), progress=False)
    loader = paddle.io.DataLoader(dataset, batch_size=4, shuffle=False, num_workers=0, collate_fn=collate_batch)
    batches = list(loader)
    assert len(batches) == 3
    region_feats, boxes, question_ids, scores, index = batches[0]
    assert list(region_feats.shape) == [4, 5, 2048] and list(question_ids.shape) == [4, 14]
    assert index.numpy().tolist() == [0, 1, 2, 3]


def test_synthetic_dataset(tmp_path):
    synthetic = pytest.importorskip("mmnas.data.synthetic")
    root = str(tmp_path / "synth")
    synthetic.make_synthetic_vqa(root, n_train_images=12, n_val_images=6, n_test_images=4, n_vg_images=4,
                                 questions_per_image=3, min_boxes=10, max_boxes=100)
    vocab = build_vocab(root, str(tmp_path / "cache"), progress=False)
    assert vocab.answer_size > 0
    for split in ("train+val+vg", "test"):
        lazy = VQADataset(root, split, vocab, progress=False)
        eager = VQADataset(root, split, vocab, preload=True, progress=False)
        np.testing.assert_array_equal(lazy.box_counts, eager.box_counts)
        assert lazy.box_counts.min() >= 10 and lazy.box_counts.max() <= 100
        batch_lazy = collate_batch([lazy[i] for i in range(8)])
        batch_eager = collate_batch([eager[i] for i in range(8)])
        for a, b in zip(batch_lazy, batch_eager):
            np.testing.assert_array_equal(a, b)
        assert batch_lazy[0].shape == (8, lazy.box_counts[:8].max(), 2048)
        assert batch_lazy[3].shape == (8, vocab.answer_size) and batch_lazy[3].any() == lazy.has_answers


# ----------------------------------------------------------------------------- word vectors

def glove_line(word, values):
    return word + " " + " ".join(f"{v:.5f}" for v in values) + "\n"


@pytest.fixture
def glove_txt(tmp_path):
    rng = np.random.default_rng(0)
    table = {w: rng.standard_normal(300).astype(np.float32) for w in ("the", "cat", ". . .", "what", "Cat")}
    path = tmp_path / "glove" / "glove.840B.300d.txt"
    os.makedirs(path.parent)
    with open(path, "w", encoding="utf-8") as f:
        for word, values in table.items():
            f.write(glove_line(word, values))
        f.write(glove_line("cat", np.ones(300)))  # a later duplicate: the first one wins
    return path, table


def test_glove_text_and_zip(glove_txt, tmp_path):
    path, table = glove_txt
    token_to_ix = {"PAD": 0, "UNK": 1, "CLS": 2, "what": 3, "cat": 4, "zebra": 5, "the": 6}
    vectors = load_word_vectors(token_to_ix, "glove", glove_path=str(path))
    assert vectors.shape == (7, 300) and vectors.dtype == np.float32
    for word in ("what", "cat", "the"):
        np.testing.assert_allclose(vectors[token_to_ix[word]], table[word], atol=1e-5)
    assert not vectors[[0, 1, 2, 5]].any()  # specials and unknown words are zeros

    zipped = tmp_path / "glove" / "glove.840B.300d.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "glove.840B.300d.txt")
    os.remove(path)
    # found at the default place under data_root, through 'auto' (spaCy absent or without the model)
    auto = load_word_vectors(token_to_ix, "auto", spacy_model="no_such_model_xyz", data_root=str(tmp_path))
    np.testing.assert_array_equal(auto, vectors)


def test_word_vectors_none_missing_and_bad(tmp_path):
    token_to_ix = {"PAD": 0, "UNK": 1, "CLS": 2, "cat": 3}
    assert load_word_vectors(token_to_ix, "none") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_word_vectors(token_to_ix, "auto", spacy_model="no_such_model_xyz", data_root=str(tmp_path)) is None
    assert len(caught) == 1 and "glove.840B.300d.zip" in str(caught[0].message)
    with pytest.raises(DataError, match="glove.840B.300d"):
        load_word_vectors(token_to_ix, "glove", data_root=str(tmp_path))
    with pytest.raises(DataError, match="spaCy"):
        load_word_vectors(token_to_ix, "spacy", spacy_model="no_such_model_xyz")
    bad = tmp_path / "short.txt"
    bad.write_text("cat 0.1 0.2\n")
    with pytest.raises(DataError, match=r"short.txt, line 1: 2 numbers, expected 300"):
        read_glove(str(bad), token_to_ix)
