"""GQA through the dataset interface, on a synthetic set in the real layout: files, vocabularies,
items, result files, bad input, and a tiny MMNasNet trained, evaluated and tested end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmnas.config import load_config
from mmnas.data.datasets import dataset_spec
from mmnas.data.features import DataError, load_npz
from mmnas.data.gqa import GQADataset
from mmnas.data.gqa_files import QUESTION_FILES, build_gqa_vocab, gqa_path
from mmnas.data.synthetic_gqa import make_synthetic_gqa
from mmnas.data.vocab import tokenize
from mmnas.metrics.normalize import prep_ans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    make_synthetic_gqa(str(root), n_train_images=40, n_val_images=12, n_testdev_images=8, n_test_only_images=4,
                       questions_per_image=4, seed=3, min_boxes=5, max_boxes=15)
    return str(root)


def read(root, part):
    return json.load(open(gqa_path(root, QUESTION_FILES[part])))


def test_layout_is_the_release_layout(gqa_root):
    train = read(gqa_root, "train")
    qid, q = next(iter(train.items()))
    assert isinstance(qid, str) and isinstance(q["imageId"], str)
    assert {"question", "answer", "fullAnswer", "isBalanced", "types", "groups", "semantic", "entailed"} <= set(q)
    assert q["types"]["structural"] in ("verify", "query", "choose", "logical", "compare")
    submission = read(gqa_root, "test")
    assert all("answer" not in q for q in submission.values())
    assert set(read(gqa_root, "testdev")) < set(submission)  # testdev is part of what the server wants
    npz = np.load(os.path.join(gqa_root, "gqa", "feats", "gqa-frcn", q["imageId"] + ".npz"))
    n = npz["x"].shape[0]
    assert npz["x"].shape == (n, 2048) and npz["bbox"].shape == (n, 4)  # rows are regions
    assert {"width", "height"} <= set(npz.files)


def test_vocabularies_follow_openvqa_rules(gqa_root, tmp_path):
    vocab = build_gqa_vocab(gqa_root, str(tmp_path), progress=False)
    parts = [read(gqa_root, p) for p in ("train", "val", "testdev", "test")]
    expected = {"PAD": 0, "UNK": 1, "CLS": 2}
    for part in parts:  # first appearance over train, val, testdev, test
        for q in part.values():
            for w in tokenize(q["question"]):
                expected.setdefault(w, len(expected))
    assert vocab.token_to_ix == expected
    assert vocab.max_token == max(len(tokenize(q["question"])) for part in parts for q in part.values())
    answers = {}
    for part in parts[:3]:  # answers of train, val, testdev, every one kept
        for q in part.values():
            answers.setdefault(prep_ans(q["answer"]), len(answers))
    assert vocab.ans_to_ix == answers
    again = build_gqa_vocab(gqa_root, str(tmp_path), progress=False)  # from the cache
    assert again.token_to_ix == vocab.token_to_ix and again.max_token == vocab.max_token


def test_items_targets_and_result_file(gqa_root, tmp_path):
    vocab = build_gqa_vocab(gqa_root, str(tmp_path), progress=False)
    val = GQADataset(gqa_root, "val", vocab, progress=False)
    questions = read(gqa_root, "val")
    assert val.question_ids == list(questions) and val.has_answers and val.choices is not None
    feats, boxes, ids, target, index = val[3]
    q = questions[val.question_ids[3]]
    ref_feats, ref_boxes = load_npz(val.image_path(3), regions_first=True)
    np.testing.assert_array_equal(feats, ref_feats)
    assert ids.shape == (vocab.max_token,) and ids[0] == vocab.token_to_ix[tokenize(q["question"])[0]]
    assert target.sum() == 1 and target[vocab.ans_to_ix[q["answer"]]] == 1  # one answer, one-hot
    assert int(index) == 3
    # perfect answers score 100 on every balanced question; the entries are the submission format
    entries = val.result_entries([questions[qid]["answer"] for qid in val.question_ids])
    assert entries[0] == {"questionId": val.question_ids[0], "prediction": questions[val.question_ids[0]]["answer"]}
    scores = val.score(entries)
    assert scores["overall"] == 100.0 and scores["validity"] == 100.0 and scores["distribution"] == 0.0
    assert "accuracy 100.00" in val.format_scores(scores)
    test = GQADataset(gqa_root, "test", vocab, progress=False)
    assert not test.has_answers and test[0][3].sum() == 0


def test_questions_kept_whole_at_model_max_token(gqa_root, tmp_path):
    """GQA keeps questions whole: the GQA configs set model.max_token to the longest question of
    the release (29), shorter ones are zero-padded to it; a config shorter than the longest
    question of the files is refused by name."""
    cfg = load_config("gqa_tiny")
    cfg.data.data_root, cfg.results_dir = gqa_root, str(tmp_path / "results")
    assert cfg.model.max_token == load_config("gqa_small").model.max_token == 29
    longest = build_gqa_vocab(gqa_root, str(tmp_path / "plain"), progress=False).max_token
    spec = dataset_spec("gqa")
    vocab = spec.build_vocab(cfg, False)
    val = spec.open(cfg, "val", vocab, False)
    words = tokenize(val.question_text(0))
    assert vocab.max_token == 29 and val[0][2].tolist() == [vocab.token_to_ix[w] for w in words] + [0] * (29 - len(words))
    cfg.model.max_token = longest - 1
    with pytest.raises(DataError, match=rf"the longest GQA question under {gqa_root} has {longest} words but "
                                        rf"model.max_token is {longest - 1}.*set model.max_token: {longest}"):
        spec.build_vocab(cfg, False)


def test_bad_input_is_one_named_error(gqa_root, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(gqa_root, root)
    vocab = build_gqa_vocab(str(root), str(tmp_path / "cache"), progress=False)
    path = gqa_path(str(root), QUESTION_FILES["val"])
    questions = json.load(open(path))
    first = next(iter(questions))
    # a channels-first (VQA-v2 layout) feature file among the GQA ones
    npz = os.path.join(str(root), "gqa", "feats", "gqa-frcn", questions[first]["imageId"] + ".npz")
    arrays = dict(np.load(npz))
    np.savez(npz, **{**arrays, "x": np.ascontiguousarray(arrays["x"].T)})
    with pytest.raises(DataError, match=r"expected \[n, 2048\] \(regions first, GQA\).*channels first"):
        GQADataset(str(root), "val", vocab, progress=False, check_feats=True)
    # a question whose text is null
    questions[first]["question"] = None
    json.dump(questions, open(path, "w"))
    with pytest.raises(DataError, match=rf"{path}: question '{first}' needs the string fields"):
        GQADataset(str(root), "val", vocab, progress=False)
    os.remove(path)
    with pytest.raises(DataError, match="GQA file"):
        GQADataset(str(root), "val", vocab, progress=False)


SCORING_DAMAGE = {  # a balanced val question edited by hand: (edit, fragment of the refusal)
    "no types": (lambda q: q.pop("types"), "has types = None, expected {structural: text, semantic: text, ...}"),
    "types without structural": (lambda q: q["types"].pop("structural"), "has types = {"),
    "no isBalanced": (lambda q: q.pop("isBalanced"), "has isBalanced = None, expected true or false"),
    "isBalanced as text": (lambda q: q.update(isBalanced="yes"), "has isBalanced = 'yes'"),
    "no groups": (lambda q: q.pop("groups"), "has groups = None, expected {global: a group name or null, ...}"),
    "groups without global": (lambda q: q.update(groups={"local": "x"}), "has groups = {'local': 'x'}"),
    "program step without argument": (lambda q: q["semantic"][0].pop("argument"), "has semantic = [{"),
}


@pytest.fixture
def damaged_copy(gqa_root, tmp_path):
    """A private copy of the synthetic GQA and the first balanced val question, to damage."""
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(gqa_root, root)
    questions = read(str(root), "val")
    first = next(qid for qid, q in questions.items() if q["isBalanced"])
    return str(root), questions, first


@pytest.mark.parametrize("damage", list(SCORING_DAMAGE))
def test_fields_the_metric_needs_are_checked_when_the_split_opens(damaged_copy, tmp_path, damage):
    """Before: no types was a KeyError in the metric after an epoch; no isBalanced or groups
    changed the scores silently. Only the splits that are scored are checked."""
    root, questions, first = damaged_copy
    edit, fragment = SCORING_DAMAGE[damage]
    edit(questions[first])
    path = gqa_path(root, QUESTION_FILES["val"])
    json.dump(questions, open(path, "w"))
    vocab = build_gqa_vocab(root, str(tmp_path / "cache"), progress=False)
    with pytest.raises(DataError) as info:
        GQADataset(root, "val", vocab, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: question '{first}' ") and fragment in message, message
    assert "which the GQA metric reads to score the split" in message and "\n" not in message
    assert len(GQADataset(root, "train+val", vocab, progress=False)) > 0  # trained on, never scored


def test_training_with_val_stops_before_the_first_epoch_on_a_val_question_without_types(damaged_copy, tmp_path,
                                                                                       capsys):
    from mmnas import cli
    root, questions, first = damaged_copy
    questions[first].pop("types")
    json.dump(questions, open(gqa_path(root, QUESTION_FILES["val"]), "w"))
    code = cli.main(["--RUN=train", "--MODEL=gqa_tiny", "--SPLIT=train", "--EVAL_EE=True", "--MAX_EPOCH=1",
                     "--VERSION=types", f"--DATA_ROOT={root}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
                     f"--RESULTS_DIR={tmp_path / 'results'}", "--NW=0"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"question '{first}' has types = None" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "ckpt" / "ckpt_types" / "epoch1.pdparams").exists()


def test_config_refuses_splits_of_the_other_dataset():
    from mmnas.config import ConfigError
    cfg = load_config("gqa_tiny")
    cfg.data.split = "train+val+vg"
    with pytest.raises(ConfigError, match="not a training split of gqa"):
        cfg.data.validate("test")
    cfg = load_config("tiny")
    cfg.data.eval_split = "testdev"
    with pytest.raises(ConfigError, match="not an evaluation split of vqa"):
        cfg.data.validate("test")
    assert dataset_spec("gqa").name == "gqa"


def test_tiny_mmnasnet_learns_synthetic_gqa(tmp_path):
    """Train the tiny model (GQA recipe: cross-entropy, no clipping) on a synthetic GQA, then
    --RUN=val on val and testdev and --RUN=test; it must beat the majority answer clearly."""
    data = tmp_path / "data"
    summary = make_synthetic_gqa(str(data), n_train_images=500, n_val_images=120, n_testdev_images=40,
                                 n_test_only_images=10, questions_per_image=5, seed=0, min_boxes=8, max_boxes=20)
    run = lambda *args: subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--MODEL=gqa_tiny",
                                        f"--DATA_ROOT={data}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
                                        f"--RESULTS_DIR={tmp_path / 'results'}", "--PRELOAD=True", *args],
                                       capture_output=True, text=True, timeout=1800, cwd=str(tmp_path))
    trained = run("--RUN=train", "--VERSION=g", "--MAX_EPOCH=5", "--EVAL_EE=False")
    assert trained.returncode == 0, trained.stderr[-3000:]
    val = run("--RUN=val", "--CKPT_V=g", "--CKPT_E=5")
    assert val.returncode == 0, val.stderr[-3000:]
    accuracy = float(val.stdout.split("accuracy ")[1].split(",")[0])
    majority = 100 * summary["val_majority_share"]
    print(f"synthetic GQA val: accuracy {accuracy:.2f} vs majority {majority:.2f}")
    assert accuracy >= majority + 12
    # predict on a GQA feature file (regions-first layout) answers as --RUN=val did, with softmax scores
    val_entries = json.load(open(tmp_path / "results" / "cache" / "result_run_g_epoch5_val.json"))
    questions = read(str(data), "val")
    entry = val_entries[0]
    image = questions[entry["questionId"]]["imageId"]
    out_json = tmp_path / "answer.json"
    asked = run("--RUN=predict", "--CKPT_V=g", "--CKPT_E=5", f"--OUT={out_json}",
                f"--FEATS={data / 'gqa' / 'feats' / 'gqa-frcn' / (image + '.npz')}",
                f"--QUESTION={questions[entry['questionId']]['question']}")
    assert asked.returncode == 0, asked.stderr[-3000:]
    answers = json.load(open(out_json))["answers"]
    assert answers[0]["answer"] == entry["prediction"] and sum(a["score"] for a in answers) <= 1.0 + 1e-6
    testdev = run("--RUN=val", "--CKPT_V=g", "--CKPT_E=5", "--EVAL_SPLIT=testdev")
    assert testdev.returncode == 0 and "testdev: accuracy" in testdev.stdout
    # testdev has its own result file: the val result of the same checkpoint is still there, unchanged
    testdev_entries = json.load(open(tmp_path / "results" / "cache" / "result_run_g_epoch5_testdev.json"))
    assert json.load(open(tmp_path / "results" / "cache" / "result_run_g_epoch5_val.json")) == val_entries
    assert {e["questionId"] for e in testdev_entries}.isdisjoint(e["questionId"] for e in val_entries)
    test = run("--RUN=test", "--CKPT_V=g", "--CKPT_E=5")
    assert test.returncode == 0, test.stderr[-3000:]
    entries = json.load(open(tmp_path / "results" / "result_test" / "result_run_g_epoch5_test.json"))
    submission = json.load(open(gqa_path(str(data), QUESTION_FILES["test"])))
    assert [e["questionId"] for e in entries] == list(submission) and set(entries[0]) == {"questionId", "prediction"}


def test_check_feats_and_packed_store_read_the_gqa_layout(gqa_root, tmp_path):
    import shutil
    from mmnas.data.check_feats import check_feats
    root = str(tmp_path / "copy")
    shutil.copytree(gqa_root, root)
    feats = os.path.join(root, "gqa", "feats", "gqa-frcn")
    questions = gqa_path(root, QUESTION_FILES["val"])
    report = check_feats(feats, [questions], workers=1, progress=False, dataset="gqa")
    assert report["ok"] and report["questions"]["n_missing"] == 0 and "missing_meta" not in report["problem_counts"]
    victim = os.path.join(feats, f"{next(iter(read(root, 'val').values()))['imageId']}.npz")
    os.remove(victim)
    report = check_feats(feats, [questions], workers=1, progress=False, dataset="gqa")
    assert not report["ok"] and report["questions"]["missing_first"] == [os.path.basename(victim)[:-4]]
    shutil.copytree(gqa_root, root, dirs_exist_ok=True)  # put it back

    tool = os.path.join(REPO, "tools", "pack_feats.py")
    packed = subprocess.run([sys.executable, tool, feats, "--dataset", "gqa", "--dtype", "float32", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    vocab = build_gqa_vocab(root, str(tmp_path / "cache"), progress=False)
    from_store = GQADataset(root, "val", vocab, progress=False)
    from_files = GQADataset(root, "val", vocab, progress=False, packed_feats="off")
    assert from_store.packed_images == from_store.num_images and from_files.packed_images == 0
    for i in (0, 7, len(from_files) - 1):
        for a, b in zip(from_store[i][:2], from_files[i][:2]):
            np.testing.assert_array_equal(a, b)
