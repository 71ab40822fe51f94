"""Every config value, command-line flag and genotype file is checked before anything runs: a
wrong type or an out-of-range value exits with status 2 and one sentence naming the file and
key (or the flag) and the value; values PyYAML reads with a surprising type are coerced where
the meaning is unambiguous (`lr_base: 1e-3` is the string "1e-3" in YAML 1.1)."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from mmnas import cli
from mmnas.config import (CONFIG_DIR, RULES, ConfigError, DataConfig, MatchingConfig, ModelConfig, RunConfig,
                          SearchConfig, TrainConfig, load_config, read_genotype, read_yaml)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(CONFIG_DIR, "vqa", "mmnasnet_tiny.yml")


def write_config(tmp_path, body: str, base: bool = True) -> str:
    path = tmp_path / "my.yml"
    path.write_text((f"base: {TINY}\n" if base else "") + body)
    return str(path)


@pytest.fixture
def dirs(tmp_path):
    data_root = tmp_path / "data"
    data_root.mkdir()
    return [f"--CKPT_DIR={tmp_path / 'ckpt'}", f"--RESULTS_DIR={tmp_path / 'results'}", f"--DATA_ROOT={data_root}"]


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line, last on stderr (Paddle may print notes when it is imported)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]) and "Traceback" not in stderr, stderr
    return errors[0]


def usage_error(argv, capsys) -> str:
    """Run the command line; it must exit 2 with one line on stderr and no traceback."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return one_error_line(err)


# ---- bad YAML values: (snippet, fragments the message must hold besides the file name) ----------

BAD_YAML = [
    ("model:\n  hidden_size: abc\n", ["model.hidden_size is 'abc'", "an integer > 0"]),
    ('train:\n  batch_size: "64"\n', ["train.batch_size is '64'", "an integer >= 1", "without quotes"]),
    ("train:\n  batch_size: 0\n", ["train.batch_size is 0", "an integer >= 1"]),
    ("train:\n  max_epoch: 2.5\n", ["train.max_epoch is 2.5", "an integer >= 1"]),
    ("train:\n  max_epoch: true\n", ["train.max_epoch is True", "an integer"]),
    ("train:\n  lr_base: abc\n", ["train.lr_base is 'abc'", "a number > 0"]),
    ("train:\n  lr_base: -1e-3\n", ["train.lr_base is -0.001", "a number > 0"]),  # coerced, then range
    ("train:\n  lr_base: .inf\n", ["train.lr_base is inf", "a number > 0"]),
    ("train:\n  lr_base_vg: 0\n", ["train.lr_base_vg is 0", "> 0"]),
    ("train:\n  lr_decay_rate: 0\n", ["train.lr_decay_rate is 0", "> 0"]),
    ("train:\n  lr_decay_epochs: [10, x]\n", ["train.lr_decay_epochs[1] is 'x'", "a list of integers"]),
    ("train:\n  lr_decay_epochs: 10\n", ["train.lr_decay_epochs is 10", "a list of integers"]),
    ("train:\n  warmup_epochs: -1\n", ["train.warmup_epochs is -1", ">= 0"]),
    ("train:\n  grad_clip: -1\n", ["train.grad_clip is -1", ">= 0"]),  # 0 = no clipping (GQA recipe)
    ("train:\n  betas: [0.9]\n", ["train.betas is [0.9]", "with exactly 2 entries"]),
    ("train:\n  betas: [0.9, 1.5]\n", ["train.betas[1] is 1.5", "each in [0, 1)"]),
    ("train:\n  betas: 0.9\n", ["train.betas is 0.9", "a list of numbers"]),
    ("train:\n  eps: 0\n", ["train.eps is 0", "> 0"]),
    ("train:\n  loss: mse\n", ["train.loss is 'mse'", "one of bce, kld"]),
    ("train:\n  seed: -5\n", ["train.seed is -5", "in [0, 2**32)"]),
    ("train:\n  eval_batch_size: 0\n", ["train.eval_batch_size is 0", ">= 1"]),
    ("train:\n  log_every: 0\n", ["train.log_every is 0", ">= 1"]),
    ("train:\n  box_pieces: 0\n", ["train.box_pieces is 0", ">= 1"]),
    ("train:\n  amp: fp8\n", ["train.amp is 'fp8'", "one of off, fp16, bf16"]),
    ("train:\n  to_static: 1\n", ["train.to_static is 1", "true or false"]),
    ("data:\n  preload: maybe\n", ["data.preload is 'maybe'", "true or false"]),
    ("data:\n  num_workers: -1\n", ["data.num_workers is -1", "an integer >= 0"]),
    ("data:\n  word_vectors: fasttext\n", ["data.word_vectors is 'fasttext'", "one of auto, spacy, glove, none"]),
    ("data:\n  split: trian\n", ["data.split is 'trian'", "one of train, train+val, train+val+vg"]),
    ("data:\n  split: train+train\n", ["data.split is 'train+train'"]),
    ("data:\n  data_root: 5\n", ["data.data_root is 5", "a string"]),
    ("model:\n  dropout: 1.0\n", ["model.dropout is 1.0", "a number in [0, 1)"]),
    ("model:\n  ffn_size: 0\n", ["model.ffn_size is 0", "an integer > 0, or null"]),
    ("model:\n  heads: 0\n", ["model.heads is 0", "an integer > 0"]),
    ("model:\n  hidden_size: 66\n", ["model.hidden_size=66", "model.heads=4"]),  # across fields
    ("model:\n  enc: [SA, XYZ]\n", ["model.enc[1] is 'XYZ'", "each one of SA, FFN"]),
    ("model:\n  dec: []\n", ["model.dec is []", "not empty"]),
    ("model:\n  genotype:\n    enc: 5\n    dec: [GA]\n", ["model.genotype.enc is 5", "a list of strings"]),
    ("model:\n  genotype:\n    enc: [SA]\n", ["model.genotype has no dec"]),
    ("model:\n  genotype: [SA, FFN]\n", ["model.genotype is ['SA', 'FFN']", "a mapping with enc and dec lists"]),
    ("model: 5\n", ["section model is 5", "a mapping"]),
    ("train:\n  batchsize: 32\n", ["unknown key(s) train.batchsize"]),
    ("trian:\n  batch_size: 32\n", ["unknown section(s) trian"]),
    ("search:\n  weight_fraction: 1\n", ["search.weight_fraction is 1.0", "in (0, 1)"]),
    ("search:\n  arch_mode: three\n", ["search.arch_mode is 'three'", "one of full, two"]),
    ("search:\n  arch_every: 0\n", ["search.arch_every is 0", ">= 1"]),
    ("search:\n  enc_positions: 0\n", ["search.enc_positions is 0", ">= 1"]),
    ("search:\n  enc_ops: 5\n", ["search.enc_ops is 5", "a list of strings or lists of strings"]),
    ("search:\n  enc_ops: [SA, GA]\n", ["search.enc_ops, position 0"]),  # across fields: GA is no encoder op
    ("train: {batch_size: [1,}\n", ["is not valid YAML", "line 2"]),
    ("base: 5\n", ["base is 5", "the path of another config file"]),
]


@pytest.mark.parametrize("body,fragments", BAD_YAML, ids=[b.split("\n")[1].strip() or b.strip() for b, _ in BAD_YAML])
def test_bad_yaml_value_exits_2_naming_file_key_and_value(tmp_path, capsys, dirs, body, fragments):
    path = write_config(tmp_path, body, base=not body.startswith("base:"))
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    for fragment in [path, *fragments]:
        assert fragment in err, (fragment, err)


def test_config_file_that_is_not_a_mapping(tmp_path, capsys, dirs):
    path = write_config(tmp_path, "- model\n- train\n", base=False)
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    assert path in err and "must hold a mapping" in err and "not list" in err


def test_error_in_a_base_file_names_that_file(tmp_path, capsys, dirs):
    base = tmp_path / "base.yml"
    base.write_text("train:\n  seed: -1\n")
    child = tmp_path / "child.yml"
    child.write_text("base: base.yml\nmodel:\n  hidden_size: 64\n")
    err = usage_error(["--RUN=train", f"--MODEL={child}", *dirs], capsys)
    assert f"config file {base}: train.seed is -1" in err


# ---- the file itself: empty, repeated keys, empty sections, base loops, encodings --------------

BAD_FILES = [  # (file text, fragments of the one error line besides the file name)
    ("", ["is empty", "model/data/train/search sections"]),
    ("# only a comment\n", ["is empty"]),
    ("train:\n  batch_size: 8\n  batch_size: 16\n", ["'batch_size' is given twice (lines 2 and 3)", "keep one"]),
    ("train:\n  batch_size: 8\nmodel:\n  heads: 2\ntrain:\n  seed: 1\n", ["'train' is given twice (lines 1 and 5)"]),
    ("train: {seed: 1, seed: 2}\n", ["'seed' is given twice (lines 1 and 1)"]),
    ("train:\nmodel:\n  heads: 2\n", ["section train is empty", "give it keys or delete the line"]),
    ("train: {}\n", ["section train is empty"]),
    ("train: 5\n", ["section train is 5", "expected a mapping"]),
    ("train: [1, 2]\n", ["section train is [1, 2]", "expected a mapping"]),
]


@pytest.mark.parametrize("text,fragments", BAD_FILES, ids=[t.replace("\n", "|") or "empty" for t, _ in BAD_FILES])
def test_bad_config_file_is_one_sentence(tmp_path, capsys, dirs, text, fragments):
    path = write_config(tmp_path, text, base=False)
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    for fragment in [f"config file {path}", *fragments]:
        assert fragment in err, (fragment, err)


def test_bare_section_does_not_drop_the_base_settings(tmp_path, capsys, dirs):
    """Before: `train:` (null) replaced the tiny base's train section, training the default recipe."""
    path = write_config(tmp_path, "train:\nmodel:\n  dropout: 0.2\n")  # with base: tiny
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    assert f"config file {path}: section train is empty" in err


def test_derived_file_merges_section_by_section_key_by_key(tmp_path):
    base, tiny = read_yaml(TINY), load_config(TINY)
    cfg = load_config(write_config(tmp_path, "train:\n  seed: 5\n"))
    assert cfg.train.seed == 5 and base["train"].get("seed") != 5
    for key in base["train"]:  # every other key of the base's section is kept
        if key != "seed":
            assert getattr(cfg.train, key) == getattr(tiny.train, key), key
    assert cfg.model == tiny.model and cfg.data == tiny.data  # sections the file does not name


@pytest.mark.parametrize("cycle", ["self", "pair"])
def test_base_loop_is_one_sentence(tmp_path, capsys, dirs, cycle):
    a, b = tmp_path / "a.yml", tmp_path / "b.yml"
    a.write_text(("base: a.yml\n" if cycle == "self" else "base: b.yml\n") + "train:\n  seed: 1\n")
    b.write_text("base: a.yml\ntrain:\n  seed: 2\n")
    err = usage_error(["--RUN=train", f"--MODEL={a}", *dirs], capsys)
    looping = a if cycle == "self" else b
    assert f"config file {looping}: base a.yml leads back to a file already read" in err
    assert "remove one of the base: lines" in err


def test_missing_base_names_the_file_that_names_it(tmp_path, capsys, dirs):
    path = write_config(tmp_path, "base: nowhere.yml\ntrain:\n  seed: 1\n", base=False)
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    assert f"config file {path}: base nowhere.yml names {tmp_path / 'nowhere.yml'}, which does not exist" in err


@pytest.mark.parametrize("kind", ["config", "genotype"])
def test_non_utf8_bytes_are_one_sentence(tmp_path, capsys, dirs, kind):
    path = tmp_path / ("my.yml" if kind == "config" else "arch.json")
    path.write_bytes(b"train:\n  seed: 1 # caf\xe9\n" if kind == "config" else b'{"enc": ["SA"], "dec": ["GA\xff"]}')
    flags = [f"--MODEL={path}"] if kind == "config" else ["--MODEL=tiny", f"--ARCH_PATH={path}"]
    err = usage_error(["--RUN=train", *flags, *dirs], capsys)
    assert f"{kind} file {path} is not UTF-8 text (byte 0x" in err and "save it as UTF-8" in err


def test_genotype_file_with_a_repeated_key(tmp_path, capsys, dirs):
    path = tmp_path / "arch.json"
    path.write_text('{"enc": ["SA"], "dec": ["GA"], "enc": ["FFN"]}')
    err = usage_error(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={path}", *dirs], capsys)
    assert f"genotype file {path} is not valid JSON/YAML: 'enc' is given twice" in err


# ---- coercion: what PyYAML hands over with a surprising type ---------------------------------

def test_yaml11_exponent_without_dot_is_a_float(tmp_path):
    path = write_config(tmp_path, "train:\n  lr_base: 1e-3\n  lr_base_vg: 5E-5\n  eps: 1e-9\n  grad_clip: 2\n")
    assert yaml.safe_load(open(path))["train"]["lr_base"] == "1e-3"  # the reason for the coercion
    t = load_config(path).train
    assert (t.lr_base, t.lr_base_vg, t.eps, t.grad_clip) == (0.001, 5e-05, 1e-09, 2.0)
    assert all(type(v) is float for v in (t.lr_base, t.lr_base_vg, t.eps, t.grad_clip))


@pytest.mark.parametrize("spelling,expected", [("no", False), ('"no"', False), ('"No"', False), ("off", False),
                                               ('"false"', False), ('"0"', False), ("yes", True), ('"yes"', True),
                                               ('"TRUE"', True), ("true", True), ('"1"', True)])
def test_bool_spellings(tmp_path, spelling, expected):
    cfg = load_config(write_config(tmp_path, f"data:\n  preload: {spelling}\n"))
    assert cfg.data.preload is expected


def test_unquoted_off_means_off_for_string_fields(tmp_path):
    cfg = load_config(write_config(tmp_path, "train:\n  amp: off\ndata:\n  packed_feats: off\n"))
    assert (cfg.train.amp, cfg.data.packed_feats) == ("off", "off")


def test_enc_in_a_file_overrides_the_genotype_of_its_base(tmp_path):
    cfg = load_config(write_config(tmp_path, "model:\n  enc: [FFN]\n"))  # the tiny base spells model.genotype
    assert cfg.model.enc == ["FFN"] and cfg.model.dec == load_config("tiny").model.dec


def test_lists_null_and_nested_pools(tmp_path):
    body = ("model:\n  ffn_size: null\ntrain:\n  betas: [0, 9.9e-1]\n  lr_decay_epochs: []\n"
            "search:\n  enc_positions: 2\n  enc_ops: [[SA], [SA, skip]]\n")
    cfg = load_config(write_config(tmp_path, body))
    assert cfg.model.ffn_size is None and cfg.model.ffn_hidden == 4 * cfg.model.hidden_size
    assert cfg.train.betas == [0.0, 0.99] and all(type(b) is float for b in cfg.train.betas)
    assert cfg.train.lr_decay_epochs == []
    assert cfg.search.pools("enc") == [["SA"], ["SA", "skip"]]


def test_flag_overrides_are_coerced_and_reach_the_config(dirs):
    args = cli.build_parser().parse_args(["--RUN=train", "--MODEL=tiny", "--PRELOAD=no", "--SEED=0", "--NW=0",
                                          "--GPU=", *dirs])
    cfg = cli.config_from_args(args)
    assert (cfg.data.preload, cfg.train.seed, cfg.data.num_workers, cfg.gpu) == (False, 0, 0, "")


# ---- shipped configs: every one loads, and nothing in it was changed by the coercion ---------

def _flatten(raw: dict):
    for section, values in raw.items():
        for key, value in (values or {}).items():
            if key == "genotype":
                yield from ((f"model.{part}", value[part]) for part in ("enc", "dec"))
            else:
                yield f"{section}.{key}", value


SHIPPED = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yml"), recursive=True))


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.relpath(p, CONFIG_DIR) for p in SHIPPED])
def test_shipped_configs_load_unchanged(path):
    cfg = load_config(path)
    raw = read_yaml(path)
    for key, value in _flatten(raw):
        section, name = key.split(".")
        loaded = getattr(getattr(cfg, section), name)
        assert loaded == value and type(loaded) is type(value), (key, value, loaded)


@pytest.mark.parametrize("name", ["mmnasnet_vqa.json", "mcan.json"])
def test_shipped_genotypes_load_unchanged(name):
    path = os.path.join(CONFIG_DIR, "genotypes", name)
    with open(path) as f:
        assert read_genotype(path) == json.load(f)


@pytest.mark.parametrize("cls", [ModelConfig, DataConfig, TrainConfig, SearchConfig])
def test_defaults_pass_their_own_checks(cls):
    obj = cls()
    before = dataclasses.asdict(obj)
    obj.validate()
    assert dataclasses.asdict(obj) == before


def test_every_rule_names_a_field():
    sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "search": SearchConfig,
                "matching": MatchingConfig}
    for key in RULES:
        section, _, name = key.rpartition(".")
        fields = {f.name for f in dataclasses.fields(sections[section] if section else RunConfig)}
        assert name in fields, key


def test_programmatic_config_is_checked_too():
    with pytest.raises(ConfigError, match=r"config: model.dropout is 1.5; expected a number in \[0, 1\)"):
        ModelConfig(dropout=1.5).validate()


# ---- bad flags: the message names the flag (not the YAML key) and the value --------------------

BAD_FLAGS = [
    (["--NW=-1"], "--NW=-1", "an integer >= 0", "data.num_workers"),
    (["--SEED=-5"], "--SEED=-5", "in [0, 2**32)", "train.seed"),
    (["--SEED=4294967296"], "--SEED=4294967296", "in [0, 2**32)", "train.seed"),
    (["--BS=0"], "--BS=0", "an integer >= 1", "train.batch_size"),
    (["--MAX_EPOCH=0"], "--MAX_EPOCH=0", "an integer >= 1", "train.max_epoch"),
    (["--ACCU=0"], "--ACCU=0", "an integer >= 1", "train.accu"),
    (["--NPROCS=0"], "--NPROCS=0", "an integer >= 1", None),
    (["--NPROCS=-2"], "--NPROCS=-2", "an integer >= 1", None),
    (["--RESUME=True", "--CKPT_V=x", "--CKPT_E=-1"], "--CKPT_E=-1", "an integer >= 1", "ckpt_epoch"),
    (["--GPU=abc"], "--GPU=abc", "GPU ids like 0 or 0,1", "gpu"),
    (["--GPU=0,x"], "--GPU=0,x", "GPU ids like 0 or 0,1", "gpu"),
    (["--SPLIT=trian"], "--SPLIT=trian", "one of train, train+val, train+val+vg", "data.split"),
    (["--DATASET=gqa", "--SPLIT=train+vg"], "data.split=train+vg is not a training split of gqa",
     "a '+'-join of train, val", None),
    (["--EVAL_SPLIT=testdev"], "data.eval_split=testdev is not an evaluation split of vqa", "one of val", None),
]


@pytest.mark.parametrize("flags,named,expected,yaml_key", BAD_FLAGS, ids=[f[1] for f in BAD_FLAGS])
def test_bad_flag_value_names_the_flag(capsys, dirs, flags, named, expected, yaml_key):
    err = usage_error(["--RUN=train", "--MODEL=tiny", *dirs, *flags], capsys)
    assert named in err and expected in err, err
    assert "or null" not in err
    if yaml_key:
        assert yaml_key not in err


def test_same_value_from_yaml_names_the_key_and_file(tmp_path, capsys, dirs):
    path = write_config(tmp_path, "train:\n  seed: -5\n")
    err = usage_error(["--RUN=train", f"--MODEL={path}", *dirs], capsys)
    assert "train.seed is -5" in err and path in err and "--SEED" not in err


def test_missing_data_root_names_the_flag(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    err = usage_error(["--RUN=train", "--MODEL=tiny", f"--DATA_ROOT={missing}", f"--RESULTS_DIR={tmp_path}"], capsys)
    assert f"--DATA_ROOT={missing} is not an existing folder" in err and "vqa/raw" in err


def test_missing_data_root_from_yaml_names_the_key(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    path = write_config(tmp_path, f"data:\n  data_root: {missing}\n")
    err = usage_error(["--RUN=train", f"--MODEL={path}", f"--RESULTS_DIR={tmp_path}"], capsys)
    assert f"data.data_root={missing}" in err and path in err and "--DATA_ROOT overrides it" in err


def test_missing_arch_path_names_the_flag(tmp_path, capsys, dirs):
    missing = tmp_path / "nowhere.json"
    err = usage_error(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={missing}", *dirs], capsys)
    assert f"--ARCH_PATH={missing} does not exist" in err


@pytest.mark.parametrize("mode", ["val", "test"])
def test_missing_ckpt_path_names_the_flag(tmp_path, capsys, dirs, mode):
    missing = tmp_path / "nowhere.pdparams"
    err = usage_error([f"--RUN={mode}", "--MODEL=tiny", f"--CKPT_PATH={missing}", *dirs], capsys)
    assert f"--CKPT_PATH={missing} does not exist" in err


@pytest.mark.parametrize("flag,value", [("--NW", "abc"), ("--BS", "1.5"), ("--PRELOAD", "maybe"), ("--RUN", "fly"),
                                        ("--DATASET", "coco"), ("--AMP", "fp8")])
def test_malformed_flag_is_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["--RUN=train", f"{flag}={value}"] if flag != "--RUN" else [f"{flag}={value}"])
    err = one_error_line(capsys.readouterr().err)
    assert info.value.code == 2
    assert err.startswith("error: argument ") and flag in err and value in err, err


# ---- genotype files (--ARCH_PATH) ---------------------------------------------------------------

BAD_GENOTYPES = [
    ('{"enc": 5, "dec": ["GA"]}', ["enc is 5", "a list of strings"]),
    ('{"enc": "SA FFN", "dec": ["GA"]}', ["enc is 'SA FFN'", "a list of strings"]),
    ('{"enc": ["SA", 3], "dec": ["GA"]}', ["enc[1] is 3", "a list of strings"]),
    ('{"enc": ["SA", null], "dec": ["GA"]}', ["enc[1] is None"]),
    ('{"enc": ["SA", "GA"], "dec": ["GA"]}', ["enc[1] is 'GA'", "each one of SA, FFN"]),
    ('{"enc": ["SA"], "dec": ["XYZ"]}', ["dec[0] is 'XYZ'", "each one of SA, GA, RSA, FFN"]),
    ('{"enc": [], "dec": ["GA"]}', ["enc is []", "not empty"]),
    ('{"enc": ["SA"]}', ["has no dec (its keys: enc)"]),
    ('{}', ["has no enc and no dec"]),
    ('["SA", "FFN"]', ["is ['SA', 'FFN']", "a mapping with enc and dec lists"]),
    ('"SA FFN"', ["is 'SA FFN'", "a mapping"]),
    ('{"genotype": {"enc": 5, "dec": ["GA"]}}', ["genotype.enc is 5"]),
    ('{"genotype": [1, 2]}', ["genotype is [1, 2]", "a mapping"]),
    ('{"enc": ["SA"', ["is not valid JSON/YAML", "line"]),
    ("", ["is empty", "a mapping"]),
]


@pytest.mark.parametrize("text,fragments", BAD_GENOTYPES, ids=[t or "empty" for t, _ in BAD_GENOTYPES])
def test_bad_genotype_file(tmp_path, capsys, dirs, text, fragments):
    path = tmp_path / "arch.json"
    path.write_text(text)
    err = usage_error(["--RUN=train", "--MODEL=tiny", f"--ARCH_PATH={path}", *dirs], capsys)
    for fragment in [f"genotype file {path}", *fragments]:
        assert fragment in err, (fragment, err)


# ---- through the real entry point ----------------------------------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["--MODEL={bad_yaml}"], "train.lr_base is 'fast'"),
    (["--MODEL=tiny", "--NW=-1"], "--NW=-1 is not valid"),
    (["--MODEL=tiny", "--BS=x"], "argument --BS: invalid int value: 'x'"),
    (["--MODEL={empty_yaml}"], "is empty"),
])
def test_run_py_exit_status_and_single_line(tmp_path, argv, fragment):
    bad_yaml = write_config(tmp_path, "train:\n  lr_base: fast\n")
    empty_yaml = tmp_path / "empty.yml"
    empty_yaml.write_text("")
    data_root = tmp_path / "data"
    data_root.mkdir()
    command = [sys.executable, os.path.join(REPO, "run.py"), "--RUN=train", f"--DATA_ROOT={data_root}",
               f"--RESULTS_DIR={tmp_path / 'results'}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
               *[a.format(bad_yaml=bad_yaml, empty_yaml=empty_yaml) for a in argv]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert fragment in one_error_line(proc.stderr)
