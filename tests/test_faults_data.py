"""Bad data injected for real: corrupted feature files, malformed question/annotation entries,
odd annotations at scoring time.

The loader cases run `run.py` in a subprocess with a timeout, so a hang fails the test instead
of stalling the suite: paddle's DataLoader used to wait forever (NW=0) or die with
"SystemError: Blocking queue is killed" (NW>0) when a feature file could not be read.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from typing import NamedTuple

import numpy as np
import pytest

from mmnas.data.check_feats import check_feats, inspect_file
from mmnas.data.dataset import VQADataset
from mmnas.data.regions import collate_batch, collate_or_failure, raise_if_failure
from mmnas.data.features import MAX_REGIONS, DataError, load_npz, read_box_count, read_json
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.data.vocab import build_vocab
from mmnas.metrics import evaluate as vqa_accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 180  # seconds; a run that stops on bad data takes ~10 s even on a busy 2-core machine
SIZES = dict(n_train_images=40, n_val_images=16, n_test_images=8, n_vg_images=8)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    """A tiny synthetic VQA-v2 (200 train / 80 val / 40 test questions) and the weights of an
    untrained tiny model for --RUN=val/test; never modified."""
    base = tmp_path_factory.mktemp("faults_data")
    root = str(base / "data")
    make_synthetic_vqa(root, workers=1, **SIZES)
    from mmnas.config import load_config
    from mmnas.checkpoint_files import atomic_save, to_numpy_state
    from mmnas.models import build_model
    vocab = build_vocab(root, str(base / "cache"), progress=False)
    model = build_model(load_config("tiny").model, vocab.token_size, vocab.answer_size)
    atomic_save(to_numpy_state(model.state_dict()), str(base / "tiny.pdparams"))
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    """A private copy of the dataset, free to break."""
    copy = str(tmp_path / "data")
    shutil.copytree(clean_root, copy)
    return copy


def weights_of(clean_root):
    return os.path.join(os.path.dirname(clean_root), "tiny.pdparams")


def feature_files(root, folder):
    d = os.path.join(root, "vqa", "feats", folder)
    return [os.path.join(d, name) for name in sorted(os.listdir(d))]


# ----------------------------------------------------------------------------- real faults

def rewrite(path, fault):
    """Damage one feature file in place, the way `fault` names."""
    with np.load(path) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    x, bbox = arrays["x"], arrays["bbox"]
    n = x.shape[1]
    if fault == "nan":
        x[7, 1] = np.nan
    elif fault == "inf_bbox":
        bbox[2, 3] = np.inf
    elif fault == "no_bbox":
        del arrays["bbox"]
    elif fault == "no_x":
        del arrays["x"]
    elif fault == "zero_boxes":
        arrays.update(x=x[:, :0], bbox=bbox[:0], num_bbox=np.int64(0))
    elif fault == "inverted":
        bbox[1, 2] = bbox[1, 0] - 3.0
    elif fault == "n_mismatch":
        arrays["bbox"] = bbox[:-1]
    elif fault == "num_bbox":
        arrays["num_bbox"] = np.int64(n + 4)
    elif fault == "num_bbox_nan":
        arrays["num_bbox"] = np.float64("nan")
    elif fault == "too_many":
        rng = np.random.default_rng(0)
        x1y1 = rng.uniform(0, 100, (150, 2))
        arrays.update(x=rng.random((2048, 150), dtype=np.float32), num_bbox=np.int64(150),
                      bbox=np.concatenate([x1y1, x1y1 + 20], 1).astype(np.float32))
    elif fault == "narrow":  # features of another width than model.feat_size (1024 instead of 2048)
        arrays["x"] = x[:1024]
    elif fault == "outside_image":  # accepted by training, so only a warning in check_feats
        bbox[0, 2] = float(arrays["image_w"]) + 50
    elif fault not in ("truncated", "corrupt_bytes"):
        raise ValueError(fault)
    np.savez(path, **arrays)
    if fault == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif fault == "corrupt_bytes":  # flip bytes inside x's data: the header still reads, the CRC fails
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 3)
            chunk = f.read(16)
            f.seek(-16, 1)
            f.write(bytes(b ^ 0xFF for b in chunk))


FAULT_MESSAGES = {
    "nan": r"'x' holds 1 NaN and 0 inf value",
    "inf_bbox": r"'bbox' holds 0 NaN and 1 inf value",
    "no_bbox": r"key 'bbox' is missing",
    "no_x": r"key 'x' is missing",
    "zero_boxes": r"'x' holds 0 regions, fewer than 1",
    "inverted": r"1 box\(es\) have x2 < x1 or y2 < y1 \(first: row 1",
    "n_mismatch": r"'bbox' has shape \[\d+, 4\] but 'x' has n=\d+ regions",
    "num_bbox": r"'num_bbox' = \d+ but 'x' has n=\d+ regions",
    "num_bbox_nan": r"'num_bbox' = nan but 'x' has n=\d+ regions",
    "too_many": r"'x' holds 150 regions, more than model.max_regions=100",
    "truncated": r"cannot be read, it is truncated or not an .npz",
    "corrupt_bytes": r"cannot be read, it is truncated or not an .npz \(BadZipFile: Bad CRC-32",
    "narrow": r"its features are 1024 wide \('x' has shape \[1024, \d+\]\) but model.feat_size is 2048\. "
              r"Fix: set model.feat_size: 1024 in the config",
}


# ----------------------------------------------------------------------------- subprocess runs

class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    sid: int  # run.py's session: everything it started


def run_cli(cwd, *args):
    """run.py in a subprocess and session of its own; a run that does not stop within RUN_TIMEOUT
    fails the test (and is killed with everything it started)."""
    cmd = [sys.executable, os.path.join(REPO, "run.py"), *args]
    proc = subprocess.Popen(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        _, stderr = proc.communicate()
        pytest.fail(f"run.py {' '.join(args)} did not stop within {RUN_TIMEOUT}s (hang); "
                    f"stderr tail: {stderr[-2000:]!r}")
    return Run(proc.returncode, stdout, stderr, proc.pid)


def session_processes(sid):
    """Processes alive in session `sid` (loader workers, spawned ranks, their helpers)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getsid(int(pid)) == sid:
                    found.append(int(pid))
            except OSError:
                continue
    return found


def kill_session(sid):
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def assert_nothing_left(run, grace=10.0):
    """Nothing run.py started outlives it by more than `grace` seconds."""
    deadline = time.time() + grace
    while session_processes(run.sid) and time.time() < deadline:
        time.sleep(0.5)
    left = session_processes(run.sid)
    kill_session(run.sid)
    assert left == [], f"processes left behind: {left}"


def error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def assert_stopped_on(proc, pattern, files):
    """Exit 2, one error line naming one of `files` with the fault and the fix; no traceback,
    no 'Blocking queue is killed', and no worker process left behind."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert any(f"feature file {path}:" in line for path in files), line
    assert re.search(pattern, line), line
    assert ". Fix: " in line
    assert "Traceback" not in proc.stderr and "Blocking queue" not in proc.stderr
    assert_nothing_left(proc)


TRAIN = ["--RUN=train", "--MODEL=tiny", "--SPLIT=train", "--MAX_EPOCH=1", "--BS=16", "--EVAL_EE=False",
         "--PRELOAD=False"]


@pytest.mark.parametrize("num_workers, fault, how_many", [
    (0, "nan", "one"),  # used to hang forever
    (2, "nan", "one"),  # used to die with "SystemError: Blocking queue is killed"
    (0, "no_bbox", "all"),
    (2, "corrupt_bytes", "all"),  # the header reads fine, the CRC check fails when the batch is read
])
def test_train_stops_on_bad_feature_file(root, tmp_path, num_workers, fault, how_many):
    files = feature_files(root, "train2014")
    victims = files[17:18] if how_many == "one" else files
    for path in victims:
        rewrite(path, fault)
    proc = run_cli(tmp_path, *TRAIN, f"--NW={num_workers}", f"--DATA_ROOT={root}", "--VERSION=bad")
    assert_stopped_on(proc, FAULT_MESSAGES[fault], victims)
    assert "--CHECK_FEATS=True finds every bad feature file" in error_line(proc)
    assert not os.path.exists(tmp_path / "ckpt" / "ckpt_bad" / "epoch1.pdparams")


@pytest.mark.parametrize("fault", ["too_many", "truncated"])
def test_train_stops_on_box_count_before_training(root, tmp_path, fault):
    """Faults visible in the file's header are found while reading the box counts, before step 1."""
    victim = feature_files(root, "train2014")[5]
    rewrite(victim, fault)
    proc = run_cli(tmp_path, *TRAIN, "--NW=2", f"--DATA_ROOT={root}", "--VERSION=bad")
    assert_stopped_on(proc, FAULT_MESSAGES[fault], [victim])
    assert "epoch 1/1:" not in proc.stderr  # no training step was started


@pytest.mark.parametrize("run, num_workers, folder, fault", [
    ("val", 2, "val2014", "nan"),
    ("val", 0, "val2014", "inverted"),
    ("test", 0, "test2015", "inf_bbox"),
    ("test", 2, "test2015", "no_x"),
])
def test_eval_stops_on_bad_feature_file(clean_root, root, tmp_path, run, num_workers, folder, fault):
    files = feature_files(root, folder)
    for path in files:
        rewrite(path, fault)
    proc = run_cli(tmp_path, f"--RUN={run}", "--MODEL=tiny", f"--CKPT_PATH={weights_of(clean_root)}",
                   f"--NW={num_workers}", f"--DATA_ROOT={root}")
    assert_stopped_on(proc, FAULT_MESSAGES[fault], files)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_search_stops_on_bad_feature_file(root, tmp_path, num_workers):
    files = feature_files(root, "train2014")
    for path in files:
        rewrite(path, "nan")
    proc = run_cli(tmp_path, "--RUN=search", "--MODEL=search_tiny", "--SPLIT=train", "--MAX_EPOCH=1", "--BS=16",
                   f"--NW={num_workers}", f"--DATA_ROOT={root}", "--VERSION=s")
    assert_stopped_on(proc, FAULT_MESSAGES["nan"], files)


def test_data_parallel_stops_on_bad_feature_file(root, tmp_path):
    """2 processes (gloo), 2 loader workers each: the rank that reads the bad file stops with the
    one error line, the other rank stops at once (not after gloo's timeout) without a word (no
    gloo trace, no Paddle "Termination signal" trace), no semaphore is leaked, and no process
    is left behind."""
    victim = feature_files(root, "train2014")[17]
    rewrite(victim, "nan")
    proc = run_cli(tmp_path, *TRAIN, "--NW=2", "--NPROCS=2", f"--DATA_ROOT={root}", "--VERSION=dp")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_line(proc).startswith(f"error: feature file {victim}: 'x' holds 1 NaN")
    assert "Traceback" not in proc.stderr and "leaked semaphore" not in proc.stderr, proc.stderr[-3000:]
    assert "C++ Traceback" not in proc.stdout and "Termination signal" not in proc.stdout, proc.stdout[-3000:]
    assert_nothing_left(proc)


def test_check_feats_flag_lists_every_bad_file_before_training(root, tmp_path):
    files = feature_files(root, "train2014")
    faults = ["nan", "no_bbox", "inverted", "n_mismatch", "corrupt_bytes", "num_bbox", "too_many"]
    for path, fault in zip(files[3:], faults):
        rewrite(path, fault)
    rewrite(files[0], "outside_image")  # training accepts it: not listed
    proc = run_cli(tmp_path, *TRAIN, "--NW=2", "--CHECK_FEATS=True", f"--DATA_ROOT={root}", "--VERSION=c")
    assert proc.returncode == 2, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("error: "):]
    assert message.startswith(f"error: {len(faults)} of {len(files)} feature files of split 'train' cannot be used:")
    listed = [line.strip() for line in message.splitlines()[1:] if line.startswith("  /")]
    assert [line.split(": ", 1)[0] for line in listed] == files[3:8]  # the first 5 bad files, in order
    for line, fault in zip(listed, faults):
        assert re.search(FAULT_MESSAGES[fault], line), line
    assert f"... and {len(faults) - 5} more" in message and "tools/check_feats.py" in message
    assert "epoch 1/1" not in proc.stderr and "Traceback" not in proc.stderr


def test_feature_width_is_model_feat_size(root, tmp_path):
    """model.feat_size is what the feature files must hold: with features 2048 wide, a config of
    1024 stops before any step naming the first feature file, its width and the key (it used to
    be a matmul shape error inside Paddle); with the default 2048, one 1024-wide file among them
    stops the run naming that file."""
    config = tmp_path / "narrow_model.yml"
    config.write_text(f"base: {os.path.join(REPO, 'configs', 'vqa', 'mmnasnet_tiny.yml')}\nmodel:\n  feat_size: 1024\n")
    first = feature_files(root, "train2014")[0]
    proc = run_cli(tmp_path, *[a if a != "--MODEL=tiny" else f"--MODEL={config}" for a in TRAIN], "--NW=0",
                   f"--DATA_ROOT={root}", "--VERSION=wide")
    assert_stopped_on(proc, r"its features are 2048 wide \('x' has shape \[2048, \d+\]\) but model.feat_size "
                            r"is 1024\. Fix: set model.feat_size: 2048 in the config", [first])
    assert "epoch 1/1:" not in proc.stderr
    victim = feature_files(root, "train2014")[9]
    rewrite(victim, "narrow")
    proc = run_cli(tmp_path, *TRAIN, "--NW=2", f"--DATA_ROOT={root}", "--VERSION=narrow")
    assert_stopped_on(proc, FAULT_MESSAGES["narrow"], [victim])


# ----------------------------------------------------------------------------- one box range

@pytest.mark.parametrize("fault", sorted(FAULT_MESSAGES) + ["outside_image"])
def test_check_feats_agrees_with_training(clean_root, tmp_path, fault):
    """check_feats calls a file an error exactly when the loader refuses it, for the same reason."""
    path = str(tmp_path / "COCO_train2014_000000000001.jpg.npz")
    shutil.copy(feature_files(clean_root, "train2014")[0], path)
    rewrite(path, fault)
    errors = [(kind, detail) for kind, detail in inspect_file(path)["problems"]
              if kind not in ("missing_meta", "box_count_out_of_range", "x_not_float32", "zero_rows",
                              "boxes_outside_image")]
    if fault == "outside_image":
        load_npz(path)  # accepted
        assert errors == [] and "boxes_outside_image" in dict(inspect_file(path)["problems"])
        return
    with pytest.raises(DataError, match=FAULT_MESSAGES[fault]) as refused:
        load_npz(path)
    assert len(errors) == 1 and errors[0][1] in str(refused.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions_named(clean_root, tmp_path):
    path = str(tmp_path / "COCO_train2014_000000000001.jpg.npz")
    shutil.copy(feature_files(clean_root, "train2014")[0], path)
    os.chmod(path, 0)
    for read in (load_npz, read_box_count):
        with pytest.raises(DataError, match=r"permission denied. Fix: make it readable by this user"):
            read(path)


def test_box_range_is_model_max_regions(root):
    """150 boxes: refused with the default max_regions (also from the header alone), accepted when
    model.max_regions allows it, through the same open_dataset the engine uses."""
    from mmnas.config import ModelConfig, load_config
    from mmnas.engine.runner import open_dataset
    assert ModelConfig().max_regions == MAX_REGIONS == 100
    victim = feature_files(root, "val2014")[2]
    rewrite(victim, "too_many")
    with pytest.raises(DataError, match=FAULT_MESSAGES["too_many"]):
        read_box_count(victim)
    assert read_box_count(victim, max_regions=150) == 150
    assert check_feats(os.path.dirname(victim), workers=1, progress=False, max_regions=150)["ok"]
    refused = check_feats(os.path.dirname(victim), workers=1, progress=False)
    assert not refused["ok"] and refused["box_count_hist"]["150"] == 1  # still in the histogram

    cfg = load_config("tiny")
    cfg.data.data_root, cfg.data.cache_dir = root, os.path.join(os.path.dirname(root), "cache")
    vocab = build_vocab(root, cfg.data.cache_dir, progress=False)
    with pytest.raises(DataError, match=r"more than model.max_regions=100.*raise model.max_regions"):
        open_dataset(cfg, "val", vocab, progress=False).box_counts
    cfg.model.max_regions = 150
    dataset = open_dataset(cfg, "val", vocab, progress=False)
    assert dataset.box_counts.max() == 150
    i = int(np.flatnonzero(dataset.box_counts == 150)[0])
    assert dataset[i][0].shape == (150, 2048)
    cfg.model.max_regions = 149
    with pytest.raises(DataError, match="more than model.max_regions=149"):
        open_dataset(cfg, "val", vocab, progress=False)[i]


def test_check_features_fills_box_counts(clean_root):
    vocab = build_vocab(clean_root, os.path.join(os.path.dirname(clean_root), "cache"), progress=False)
    checked = VQADataset(clean_root, "val", vocab, check_feats=True, progress=False)
    lazy = VQADataset(clean_root, "val", vocab, progress=False)
    np.testing.assert_array_equal(checked.box_counts, lazy.box_counts)


# ----------------------------------------------------------------------------- failure batches

def test_failure_batch_round_trip(clean_root):
    """A batch with an unreadable item becomes a 1-array failure batch that raises its DataError."""
    from mmnas.data.regions import FailureReportingDataset, LoadFailure
    vocab = build_vocab(clean_root, os.path.join(os.path.dirname(clean_root), "cache"), progress=False)
    dataset = FailureReportingDataset(VQADataset(clean_root, "val", vocab, progress=False))
    good = [dataset[0], dataset[1]]
    batch = collate_or_failure(good)
    assert len(batch) == 5 and all(np.array_equal(a, b) for a, b in zip(batch, collate_batch(good)))
    raise_if_failure(batch)  # no error
    failure = collate_or_failure(good + [LoadFailure(1, "feature file f.npz: broken. Fix: re-extract it.")])
    assert len(failure) == 1 and failure[0].dtype == np.uint8
    with pytest.raises(DataError, match=r"^feature file f.npz: broken. Fix: re-extract it; --CHECK_FEATS"):
        raise_if_failure(failure)
    other = collate_or_failure([LoadFailure(2, "reading item 3 failed:\nKeyError: 'x'")])
    with pytest.raises(RuntimeError, match="a data loader worker failed: reading item 3"):
        raise_if_failure(other)


# ----------------------------------------------------------------------------- questions, annotations

def edit_json(path, key, index, field, value):
    with open(path) as f:
        data = json.load(f)
    if value is KeyError:
        del data[key][index][field]
    else:
        data[key][index][field] = value
    with open(path, "w") as f:
        json.dump(data, f)
    return data[key][index]["question_id"]


QUESTIONS = "vqa/raw/v2_OpenEnded_mscoco_train2014_questions.json"
ANNOTATIONS = "vqa/raw/v2_mscoco_train2014_annotations.json"


@pytest.mark.parametrize("file, key, field, value, pattern", [
    (QUESTIONS, "questions", "question", None, r"has question = None, expected a string"),
    (QUESTIONS, "questions", "question", 42, r"has question = 42, expected a string"),
    (QUESTIONS, "questions", "image_id", "9", r"has image_id = '9', expected an integer"),
    (ANNOTATIONS, "annotations", "answers", "yes", r"has answers = 'yes', expected a list"),
    (ANNOTATIONS, "annotations", "answers", [{"answer": "yes"}, {"answer_id": 2}],
     r"answers\[1\] is not an \{\"answer\": text\} entry"),
    (ANNOTATIONS, "annotations", "multiple_choice_answer", None, r"has multiple_choice_answer = None"),
])
def test_malformed_entry_named(root, file, key, field, value, pattern):
    path = os.path.join(root, file)
    qid = edit_json(path, key, 7, field, value)
    with pytest.raises(DataError, match=pattern) as err:
        read_json(path, key)
    assert str(err.value).startswith(f"{path}: {key}[7] (question_id {qid}) has {field} = ")
    assert "fix or remove that entry" in str(err.value)


def test_null_question_text_stops_run(root, tmp_path):
    path = os.path.join(root, QUESTIONS)
    qid = edit_json(path, "questions", 3, "question", None)
    proc = run_cli(tmp_path, *TRAIN, "--NW=0", f"--DATA_ROOT={root}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_line(proc).startswith(f"error: {path}: questions[3] (question_id {qid}) has question = None, "
                                       f"expected a string; fix or remove that entry")


# ----------------------------------------------------------------------------- scoring

def annotation(qid, answers, **extra):
    ann = {"question_id": qid, "image_id": 1, "question_type": "what", "answer_type": "other",
           "multiple_choice_answer": "yes", "answers": [{"answer": a} for a in answers]}
    ann.update(extra)
    return ann


def test_scoring_skips_annotations_without_answers():
    annotations = [annotation(1, ["yes"] * 10), annotation(2, ["no"] * 3 + ["yes"] * 7),
                   annotation(3, []), {**annotation(4, ["yes"] * 10), "answers": [{"answer_id": 1}]},
                   {k: v for k, v in annotation(5, ["yes"] * 10).items() if k != "answers"}]
    predictions = {i: "no" for i in range(1, 6)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = vqa_accuracy(annotations, predictions)
    # q1: 0 matches -> 0; q2: 3 matches -> each annotator sees 3 (non-"no") or 2 ("no") of the others:
    # (7 * 1 + 3 * 2/3) / 10 = 0.9
    assert scores["n_questions"] == 2 and scores["n_skipped"] == 3
    assert scores["overall"] == 45.0 and set(scores["per_question"]) == {1, 2}
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("3 of 5 annotations have no usable answers") and "[3, 4, 5]" in m for m in messages)


def test_scoring_missing_types_and_nothing_to_score():
    annotations = [annotation(1, ["yes"] * 10), {k: v for k, v in annotation(2, ["yes"] * 10).items()
                                                 if k != "answer_type"}]
    with pytest.warns(UserWarning, match=r"1 annotations lack answer_type or question_type.*\[2\]"):
        scores = vqa_accuracy(annotations, {1: "yes", 2: "yes"})
    assert scores["per_answer_type"] == {"other": 100.0, "unknown": 100.0}
    with pytest.raises(ValueError, match="none of the 2 annotations has answers to score against"):
        vqa_accuracy([annotation(1, []), annotation(2, [])], {1: "yes", 2: "no"})


def test_val_run_with_empty_answers_scores(clean_root, root, tmp_path):
    """--RUN=val used to die with ZeroDivisionError after writing the result file."""
    path = os.path.join(root, "vqa/raw/v2_mscoco_val2014_annotations.json")
    with open(path) as f:
        data = json.load(f)
    data["annotations"][4]["answers"] = []
    with open(path, "w") as f:
        json.dump(data, f)
    proc = run_cli(tmp_path, "--RUN=val", "--MODEL=tiny", f"--CKPT_PATH={weights_of(clean_root)}", "--NW=0",
                   f"--DATA_ROOT={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(data["annotations"])
    assert f"1 of {n} annotations have no usable answers" in proc.stderr
    assert f"on {n - 1} questions (1 without answers not scored)" in proc.stdout


def test_val_with_no_answers_at_all_is_a_named_error(clean_root, root, tmp_path):
    from mmnas.config import load_config
    from mmnas.engine.evaluate import evaluate
    from mmnas.models import build_model
    path = os.path.join(root, "vqa/raw/v2_mscoco_val2014_annotations.json")
    with open(path) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        ann["answers"] = []
    with open(path, "w") as f:
        json.dump(data, f)
    vocab = build_vocab(root, str(tmp_path / "cache"), progress=False)
    dataset = VQADataset(root, "val", vocab, progress=False)
    model = build_model(load_config("tiny").model, vocab.token_size, vocab.answer_size)
    expected = (r"cannot score .*result_run_x_val.json \(written\): none of the 80 annotations has answers to "
                r"score against .*; check the annotation file\(s\) of split 'val'")
    with pytest.raises(DataError, match=expected):
        evaluate(model, dataset, name="x", results_dir=str(tmp_path / "results"), batch_size=64, progress=False)
    assert os.path.isfile(tmp_path / "results" / "cache" / "result_run_x_val.json")


# ----------------------------------------------------------------------------- vocabularies

def swap_two_answers(v):
    v["ix_to_ans"]["0"], v["ix_to_ans"]["1"] = v["ix_to_ans"]["1"], v["ix_to_ans"]["0"]


VOCAB_DAMAGE = {  # hand edits of a vocab.json: (edit, fragment of the refusal)
    # before: every answer 0 reported as answer 1 and back, silently
    "ix_to_ans swapped": (swap_two_answers, "ix_to_ans[0] is"),
    # before: a KeyError when the model picks answer 2
    "ix_to_ans entry missing": (lambda v: v["ix_to_ans"].pop("2"), "ix_to_ans has"),
    # before: predict allocated int64 [10**10] question ids (80 GB)
    "max_token huge": (lambda v: v.update(max_token=10 ** 10), "max_token is 10000000000, expected 1..512"),
    "max_token zero": (lambda v: v.update(max_token=0), "max_token is 0"),
    "max_token text": (lambda v: v.update(max_token="many"), "non-integer ids"),
    "token id twice": (lambda v: v["token_to_ix"].update(dog=v["token_to_ix"]["PAD"]), "are given to several entries"),
    "token id gap": (lambda v: v["token_to_ix"].update(dog=10 ** 6), "they run from 0 to 1000000"),
    "answer id twice": (lambda v: v["ans_to_ix"].update(
        {a: 0 for a in v["ans_to_ix"] if v["ans_to_ix"][a] == 1}), "the ids of ans_to_ix"),
    "no UNK": (lambda v: v.update(token_to_ix={("unk" if w == "UNK" else w): i for w, i in v["token_to_ix"].items()}),
               "hold UNK"),
    "no ix_to_ans": (lambda v: v.pop("ix_to_ans"), "lacks token_to_ix / ans_to_ix / ix_to_ans"),
}


@pytest.mark.parametrize("damage", list(VOCAB_DAMAGE))
def test_hand_damaged_vocabulary_is_refused_by_name(clean_root, tmp_path, capsys, damage):
    from mmnas import cli
    edit, fragment = VOCAB_DAMAGE[damage]
    cache = os.path.join(os.path.dirname(clean_root), "cache")
    vocab = build_vocab(clean_root, cache, progress=False).to_dict()
    edit(vocab)
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab))
    feats = feature_files(clean_root, "val2014")[0]
    code = cli.main(["--RUN=predict", "--MODEL=tiny", f"--CKPT_PATH={weights_of(clean_root)}", f"--VOCAB={path}",
                     f"--FEATS={feats}", "--QUESTION=what is it?", f"--RESULTS_DIR={tmp_path / 'results'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    line = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(line) == 1 and "Traceback" not in err, err
    assert line[0].startswith(f"error: vocabulary file {path}") and fragment in line[0], line[0]
    assert "delete it to have the vocabularies rebuilt from the data files" in line[0]


def test_damaged_vocabulary_cache_is_rebuilt(root, tmp_path):
    cache = str(tmp_path / "cache")
    built = build_vocab(root, cache, progress=False)
    (cache_file,) = [os.path.join(cache, n) for n in os.listdir(cache)]
    with open(cache_file) as f:
        vocab = json.load(f)
    swap_two_answers(vocab)
    with open(cache_file, "w") as f:
        json.dump(vocab, f)
    with pytest.warns(UserWarning, match=r"vocabulary cache unreadable, rebuilding it: .*ix_to_ans\[0\]"):
        again = build_vocab(root, cache, progress=False)
    assert again.ix_to_ans == built.ix_to_ans and again.ans_to_ix == built.ans_to_ix
