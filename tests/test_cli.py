"""Command line: every invalid combination exits with status 2 and one clear sentence on stderr,
before any data is read or any process is spawned; --ARCH_PATH; --help."""
import json
import os
import subprocess
import sys

import paddle
import pytest

from mmnas import cli
from mmnas.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(argv, capsys, *fragments):
    code, out, err = run(argv, capsys)
    assert code == 2, (code, err)
    message = err.strip()
    assert message.startswith("error: ") and "\n" not in message, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def dirs(tmp_path):
    return [f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}",
            f"--DATA_ROOT={tmp_path / 'no_data'}"]


def test_batch_not_divisible_by_accu(capsys, dirs):
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--BS=10", "--ACCU=3", *dirs], capsys,
                       "--BS=10", "--ACCU=3")


def test_batch_not_split_over_processes(capsys, dirs):
    # 16 % 16 == 0, but two processes get 8 each, which ACCU=16 cannot split
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--BS=16", "--ACCU=16", "--NPROCS=2", *dirs], capsys,
                       "--BS=16", "--ACCU=16")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--BS=15", "--NPROCS=2", *dirs], capsys, "--BS=15")


def test_nonpositive_numbers(capsys, dirs):
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--BS=0", *dirs], capsys, "--BS")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--MAX_EPOCH=0", *dirs], capsys, "--MAX_EPOCH")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--NPROCS=0", *dirs], capsys, "--NPROCS")


def test_resume_needs_version_and_epoch(capsys, dirs):
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--RESUME=True", *dirs], capsys, "--CKPT_V", "--CKPT_E")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--RESUME=True", "--CKPT_V=x", *dirs], capsys, "--CKPT_E")


@pytest.mark.parametrize("mode", ["val", "test"])
def test_eval_needs_weights(capsys, dirs, mode):
    assert_usage_error([f"--RUN={mode}", "--MODEL=tiny", *dirs], capsys, "--CKPT_PATH", "--CKPT_V")
    assert_usage_error([f"--RUN={mode}", "--MODEL=tiny", "--CKPT_V=x", *dirs], capsys, "--CKPT_E")


def test_resume_only_for_train(capsys, dirs):
    assert_usage_error(["--RUN=val", "--MODEL=tiny", "--RESUME=True", "--CKPT_V=x", "--CKPT_E=1", *dirs], capsys,
                       "--RESUME", "--RUN=val")


def test_ckpt_path_is_not_for_search(capsys, dirs, tmp_path):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"")
    assert_usage_error(["--RUN=search", "--MODEL=tiny", f"--CKPT_PATH={weights}", *dirs], capsys,
                       "--CKPT_PATH", "--RESUME")


def test_checkpoint_flags_that_do_not_go_together(capsys, dirs, tmp_path):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"")
    # refused from the flags alone: no "resuming with the settings of ..." note before the refusal
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--RESUME=True", "--CKPT_V=x", "--CKPT_E=1",
                        f"--CKPT_PATH={weights}", *dirs], capsys, "Give one of the two")
    # a checkpoint named without --RESUME would be ignored: refused, with both ways out
    for flags in (["--CKPT_V=x", "--CKPT_E=1"], ["--CKPT_V=x"], ["--CKPT_E=1"]):
        assert_usage_error(["--RUN=train", "--MODEL=tiny", *flags, *dirs], capsys,
                           "--RESUME=True", "--CKPT_PATH=")
    # the optimizer file instead of the weights beside it
    optimizer_file = tmp_path / "epoch2.pdopt"
    optimizer_file.write_bytes(b"")
    for mode in ("train", "val"):
        assert_usage_error([f"--RUN={mode}", "--MODEL=tiny", f"--CKPT_PATH={optimizer_file}", *dirs], capsys,
                           "optimizer-state file", str(tmp_path / "epoch2.pdparams"))


def test_fine_tuning_from_a_missing_file(capsys, dirs, tmp_path):
    missing = tmp_path / "released.pdparams"
    assert_usage_error(["--RUN=train", "--MODEL=tiny", f"--CKPT_PATH={missing}", *dirs], capsys,
                       f"--CKPT_PATH={missing} does not exist")


@pytest.mark.skipif(paddle.device.is_compiled_with_cuda(), reason="this Paddle build has CUDA")
def test_gpu_on_cpu_build(capsys, dirs):
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--GPU=0", *dirs], capsys, "--GPU=0", "CUDA")


def test_unknown_model(capsys, dirs):
    assert_usage_error(["--RUN=train", "--MODEL=no_such_model", *dirs], capsys, "no_such_model")


def test_missing_ckpt_path(capsys, dirs, tmp_path):
    missing = tmp_path / "nowhere.pdparams"
    assert_usage_error(["--RUN=test", "--MODEL=tiny", f"--CKPT_PATH={missing}", *dirs], capsys, str(missing))
    assert_usage_error(["--RUN=val", "--MODEL=tiny", "--CKPT_V=nov", "--CKPT_E=3", *dirs], capsys,
                       os.path.join("ckpt_nov", "epoch3.pdparams"))


def test_val_without_raw_files_lists_them(capsys, tmp_path):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"")  # exists; the data check comes first
    data_root = tmp_path / "empty_data"
    os.makedirs(data_root / "vqa" / "raw")
    code, out, err = run(["--RUN=val", "--MODEL=tiny", f"--CKPT_PATH={weights}", f"--DATA_ROOT={data_root}",
                          f"--RESULTS_DIR={tmp_path / 'results'}"], capsys)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    for name in ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_OpenEnded_mscoco_val2014_questions.json",
                 "v2_mscoco_train2014_annotations.json", "v2_mscoco_val2014_annotations.json"):
        assert os.path.join(str(data_root), "vqa", "raw", name) in err


def test_bad_flag_values_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--RUN=fly"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["--RUN=train", "--RESUME=maybe"])
    assert info.value.code == 2
    assert "expected True or False" in capsys.readouterr().err


def test_arch_path_replaces_genotype(tmp_path):
    genotype_file = os.path.join(REPO, "configs", "genotypes", "mcan.json")
    with open(genotype_file) as f:
        raw = json.load(f)
    expected = raw.get("genotype", raw)
    args = cli.build_parser().parse_args(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={genotype_file}"])
    cfg = cli.config_from_args(args)
    assert cfg.model.enc == list(expected["enc"]) and cfg.model.dec == list(expected["dec"])
    assert cfg.model.enc != load_config("tiny").model.enc
    assert cfg.model.hidden_size == load_config("tiny").model.hidden_size  # only the genotype changes
    # a YAML genotype nested under `genotype`, as the search writes it
    nested = tmp_path / "searched.yml"
    nested.write_text("genotype:\n  enc: [SA, FFN]\n  dec: [RSA, GA, FFN]\n")
    cfg = cli.config_from_args(cli.build_parser().parse_args(["--RUN=train", "--MODEL=tiny",
                                                              f"--ARCH_PATH={nested}"]))
    assert (cfg.model.enc, cfg.model.dec) == (["SA", "FFN"], ["RSA", "GA", "FFN"])


def test_arch_path_errors(capsys, dirs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"enc": ["SA", "XYZ"], "dec": ["GA"]}))
    assert_usage_error(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={bad}", *dirs], capsys, "XYZ")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={tmp_path / 'none.json'}", *dirs], capsys,
                       "none.json")


def test_overrides_reach_the_config(tmp_path):
    args = cli.build_parser().parse_args(
        ["--RUN=train", "--MODEL=tiny", "--BS=32", "--ACCU=4", "--MAX_EPOCH=2", "--SEED=5", "--SPLIT=train+val",
         "--NW=0", f"--DATA_ROOT={tmp_path}", f"--RESULTS_DIR={tmp_path / 'r'}", "--VERSION=v1"])
    cfg = cli.config_from_args(args)
    t = cfg.train
    assert (t.batch_size, t.accu, t.max_epoch, t.seed) == (32, 4, 2, 5)
    assert (cfg.data.split, cfg.data.num_workers, cfg.data.data_root) == ("train+val", 0, str(tmp_path))
    assert cfg.data.cache_dir is None and cfg.cache_dir == os.path.join(str(tmp_path / "r"), "cache") and cfg.version == "v1"
    resumed = cli.config_from_args(cli.build_parser().parse_args(
        ["--RUN=train", "--MODEL=tiny", "--RESUME=True", "--CKPT_V=old", "--CKPT_E=2"]))
    assert resumed.version == "old" and resumed.resume and resumed.ckpt_epoch == 2


def test_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--RUN", "--MODEL", "--RESUME", "--CKPT_V", "--CKPT_E", "--CKPT_PATH", "--ACCU", "--NPROCS",
                 "--ARCH_PATH", "--SAVE_PRED"):
        assert flag in proc.stdout


def test_budget_gflops_flag_sets_the_search_budget(capsys, dirs):
    """--BUDGET_GFLOPS is search.budget_gflops (a search under it: test_search_strategies); a bad
    value or another run is one sentence and exit 2."""
    args = cli.build_parser().parse_args(["--RUN=search", "--MODEL=search_tiny", "--BUDGET_GFLOPS=4.5"])
    assert cli.config_from_args(args).search.budget_gflops == 4.5
    no_flag = cli.build_parser().parse_args(["--RUN=search", "--MODEL=search_tiny"])
    assert cli.config_from_args(no_flag).search.budget_gflops is None
    assert_usage_error(["--RUN=search", "--MODEL=search_tiny", "--BUDGET_GFLOPS=four", *dirs], capsys,
                       "--BUDGET_GFLOPS")
    assert_usage_error(["--RUN=search", "--MODEL=search_tiny", "--BUDGET_GFLOPS=0", *dirs], capsys, "--BUDGET_GFLOPS")
    assert_usage_error(["--RUN=train", "--MODEL=tiny", "--BUDGET_GFLOPS=4", *dirs], capsys,
                       "--BUDGET_GFLOPS", "--RUN=search")


def fake_checkpoint(tmp_path, vocab_fields):
    """ckpt/ckpt_g/epoch1.pdparams (empty: config_from_args reads only the vocab.json beside it)."""
    folder = tmp_path / "ckpt" / "ckpt_g"
    folder.mkdir(parents=True)
    (folder / "epoch1.pdparams").write_bytes(b"")
    (folder / "vocab.json").write_text(json.dumps({"token_to_ix": {"PAD": 0, "UNK": 1}, "ans_to_ix": {},
                                                   "ix_to_ans": {}, **vocab_fields}))
    return [f"--CKPT_DIR={tmp_path / 'ckpt'}", "--CKPT_V=g", "--CKPT_E=1", f"--DATA_ROOT={tmp_path}"]


@pytest.mark.parametrize("run", ["val", "test", "predict"])
def test_evaluating_a_checkpoint_uses_the_dataset_it_was_trained_on(tmp_path, capsys, run):
    flags = fake_checkpoint(tmp_path, {"dataset": "refcocog"})
    extra = {"test": ["--EVAL_SPLIT=test"], "predict": ["--FEATS=x.npz", "--QUESTION=the cat"]}.get(run, [])
    cfg = cli.config_from_args(cli.build_parser().parse_args([f"--RUN={run}", "--MODEL=vgd_tiny", *flags, *extra]))
    assert load_config("vgd_tiny").data.dataset == "refcoco" and cfg.data.dataset == "refcocog"
    note = capsys.readouterr().err
    assert "refcocog, the dataset" in note and "vocab.json" in note and "--DATASET" in note
    # --DATASET given: the user's choice stands, without a note
    extra = ["--EVAL_SPLIT=testA"] if run == "test" else extra  # RefCOCO+ has testA/testB, no test
    cfg = cli.config_from_args(cli.build_parser().parse_args(
        [f"--RUN={run}", "--MODEL=vgd_tiny", "--DATASET=refcoco+", *flags, *extra]))
    assert cfg.data.dataset == "refcoco+" and capsys.readouterr().err == ""


def test_a_vocab_json_without_a_dataset_changes_nothing(tmp_path, capsys):
    flags = fake_checkpoint(tmp_path, {})  # written before training named its dataset there
    cfg = cli.config_from_args(cli.build_parser().parse_args(["--RUN=val", "--MODEL=vgd_tiny", *flags]))
    assert cfg.data.dataset == "refcoco" and capsys.readouterr().err == ""


def test_evaluating_a_checkpoint_with_a_config_of_another_task_names_the_flag(tmp_path, capsys):
    flags = fake_checkpoint(tmp_path, {"dataset": "refcocog"})
    message = assert_usage_error(["--RUN=val", *flags], capsys, "trained on refcocog", "grounding task",
                                 "the default --MODEL", "answer task", "pass the --MODEL it was trained with")
    assert "vocab.json" in message
