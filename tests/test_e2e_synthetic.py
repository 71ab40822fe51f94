"""End to end on the synthetic dataset, as a user runs it: train with --SPLIT=train and val after
every epoch, then --RUN=val and --RUN=test from the checkpoint. The model must beat the
majority-answer baseline by a wide margin (README.md, "Result")."""
import collections
import json
import os
import subprocess
import sys

from conftest import REPO
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.metrics import evaluate

MARGIN = 15.0  # percentage points above the majority-answer baseline


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"run.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout



def test_train_val_test_on_synthetic_data(tmp_path):
    data_root = tmp_path / "data"
    make_synthetic_vqa(str(data_root), n_train_images=500, n_val_images=120, n_test_images=40,
                       n_vg_images=20, questions_per_image=5, seed=1, min_boxes=10, max_boxes=30)
    common = ["--MODEL=tiny", f"--DATA_ROOT={data_root}", "--PRELOAD=True"]
    out = run_cli(["--RUN=train", "--SPLIT=train", "--VERSION=e2e", "--MAX_EPOCH=5", *common], tmp_path)
    assert "epoch 5 val: overall" in out

    # majority-answer baseline: the most frequent training answer for every val question
    raw = data_root / "vqa" / "raw"
    train_ann = json.load(open(raw / "v2_mscoco_train2014_annotations.json"))["annotations"]
    val_ann = json.load(open(raw / "v2_mscoco_val2014_annotations.json"))["annotations"]
    majority = collections.Counter(a["multiple_choice_answer"] for a in train_ann).most_common(1)[0][0]
    baseline = evaluate(val_ann, {a["question_id"]: majority for a in val_ann})["overall"]

    out = run_cli(["--RUN=val", "--CKPT_V=e2e", "--CKPT_E=5", *common], tmp_path)
    result_path = tmp_path / "results" / "cache" / "result_run_e2e_epoch5_val.json"
    scores = evaluate(val_ann, json.load(open(result_path)))
    assert f"overall {scores['overall']:.2f}" in out
    print(f"synthetic val accuracy {scores['overall']:.2f} vs majority baseline {baseline:.2f}")
    assert scores["overall"] >= baseline + MARGIN, (scores, baseline)

    run_cli(["--RUN=test", "--CKPT_V=e2e", "--CKPT_E=5", *common], tmp_path)
    test_result = json.load(open(tmp_path / "results" / "result_test" / "result_run_e2e_epoch5_test.json"))
    test_questions = json.load(open(raw / "v2_OpenEnded_mscoco_test2015_questions.json"))["questions"]
    assert sorted(r["question_id"] for r in test_result) == sorted(q["question_id"] for q in test_questions)
    assert all(isinstance(r["answer"], str) and r["answer"] for r in test_result)
