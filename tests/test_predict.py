"""Ask the model (--RUN=predict and engine.predict.Predictor) after a short training on synthetic
data: its answer is --RUN=val's answer for the same question and image, for every question family;
the attention maps are distributions over the real regions/words with nothing on padding; the
picture is written at the image's size; the errors a user can make exit 2 with one line."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest
from PIL import Image

from mmnas import cli
from mmnas.data import VOCAB_FILE, build_vocab
from mmnas.data.synthetic import FAMILIES, TRUTH_FILE, make_synthetic_vqa
from mmnas.engine.attention_picture import find_photo
from mmnas.engine.predict import Predictor, PredictError, read_image_features

EPOCHS = 2


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 2 epochs on a small synthetic world (with pictures), its val
    result file, and the val questions grouped by family."""
    root = tmp_path_factory.mktemp("predict")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=120, n_val_images=30, n_test_images=2, n_vg_images=2,
                       questions_per_image=4, seed=5, min_boxes=6, max_boxes=14, pictures=True)
    dirs = [f"--DATA_ROOT={data_root}", f"--CKPT_DIR={root / 'ckpt'}", f"--RESULTS_DIR={root / 'results'}",
            "--MODEL=tiny", "--NW=0"]
    argv = ["--RUN=train", "--SPLIT=train", "--VERSION=ask", f"--MAX_EPOCH={EPOCHS}", "--BS=32",
            "--EVAL_EE=False", "--PRELOAD=True", *dirs]
    assert cli.main(argv) == 0
    assert cli.main(["--RUN=val", "--CKPT_V=ask", f"--CKPT_E={EPOCHS}", *dirs]) == 0
    with open(root / "results" / "cache" / f"result_run_ask_epoch{EPOCHS}_val.json") as f:
        val_answers = {r["question_id"]: r["answer"] for r in json.load(f)}
    vqa = data_root / "vqa"
    with open(vqa / "raw" / "v2_OpenEnded_mscoco_val2014_questions.json") as f:
        questions = json.load(f)["questions"]
    with open(vqa / TRUTH_FILE) as f:
        family_of = json.load(f)["question_family"]
    by_family = {}
    for q in questions:
        by_family.setdefault(family_of[str(q["question_id"])], []).append(q)
    weights = root / "ckpt" / "ckpt_ask" / f"epoch{EPOCHS}.pdparams"
    return dict(root=root, data_root=data_root, dirs=dirs, val_answers=val_answers, by_family=by_family,
                weights=str(weights), predictor=Predictor.from_checkpoint(str(weights), "tiny"))


def feature_path(data_root, image_id):
    return str(data_root / "vqa" / "feats" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg.npz")


def test_training_writes_the_vocabularies_beside_the_checkpoints(trained):
    with open(os.path.join(os.path.dirname(trained["weights"]), VOCAB_FILE)) as f:
        saved = json.load(f)
    built = build_vocab(str(trained["data_root"]), str(trained["root"] / "results" / "cache"), progress=False)
    assert saved["token_to_ix"] == built.token_to_ix and saved["ans_to_ix"] == built.ans_to_ix
    assert trained["predictor"].vocab_source.endswith(VOCAB_FILE)


def test_answers_of_every_family_equal_val_answers(trained):
    predictor, asked = trained["predictor"], 0
    assert sorted(trained["by_family"]) == sorted(name for name, _, _ in FAMILIES)
    for family, questions in sorted(trained["by_family"].items()):
        for q in questions[:3]:
            answer = predictor.ask(feature_path(trained["data_root"], q["image_id"]), q["question"], topk=3)
            assert answer.answers[0] == trained["val_answers"][q["question_id"]], (family, q)
            assert len(answer.answers) == 3 and answer.scores == sorted(answer.scores, reverse=True)
            assert all(0.0 < s < 1.0 for s in answer.scores)
            asked += 1
    assert asked >= 20


def test_cli_answer_equals_val_and_the_picture_has_the_image_size(trained, capsys, tmp_path):
    q = next(q for q in trained["by_family"]["colour_of"]
             if read_image_features(feature_path(trained["data_root"], q["image_id"])).image_w >= 480)
    feats = feature_path(trained["data_root"], q["image_id"])
    out_json = tmp_path / "answer.json"
    code, out, err = run(["predict", "--CKPT_V=ask", f"--CKPT_E={EPOCHS}", f"--FEATS={feats}",
                          f"--QUESTION={q['question']}", "--TOPK=4", f"--OUT={out_json}", *trained["dirs"]], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["answers"][0]["answer"] == trained["val_answers"][q["question_id"]]
    assert len(result["answers"]) == 4 and f"1. {result['answers'][0]['answer']}" in out
    # the picture: found photo, default path under results/predict/, photo panel at the image's size
    image = read_image_features(feats)
    assert result["photo"] == find_photo(feats) and result["photo"].endswith(".png")
    picture = result["picture"]
    assert picture["path"].startswith(str(trained["root"] / "results" / "predict")) and picture["path"] in out
    with Image.open(picture["path"]) as png:
        assert png.size == (picture["width"], picture["height"])
    assert picture["image_box"] == [0, 0, image.image_w, image.image_h]
    assert picture["width"] == image.image_w and picture["height"] > image.image_h  # words under it
    assert sum(r["weight"] for r in result["regions"]) == pytest.approx(1.0, abs=1e-5)


def test_attention_sums_to_one_over_real_regions_and_ignores_padding(trained):
    predictor = trained["predictor"]
    q = trained["by_family"]["count_category"][0]
    image = read_image_features(feature_path(trained["data_root"], q["image_id"]))
    n = len(image.boxes)
    plain = predictor.ask(image, q["question"])
    padded = predictor.ask((np.concatenate([image.region_feats, np.zeros((7, 2048), np.float32)]),
                            np.concatenate([image.boxes, np.zeros((7, 4), np.float32)]),
                            image.image_w, image.image_h), q["question"])
    assert plain.image_attention.shape == (n,) and padded.image_attention.shape == (n + 7,)
    assert plain.image_attention.sum() == pytest.approx(1.0, abs=1e-5) and (plain.image_attention > 0).all()
    # AttFlat masks with -1e9 before Paddle's softmax, whose CPU exp bottoms out near 1e-29: nothing
    assert (padded.image_attention[n:] < 1e-20).all() and padded.region_is_padding[n:].all()
    np.testing.assert_allclose(padded.image_attention[:n], plain.image_attention, atol=1e-5)
    assert padded.answers == plain.answers
    words = len(plain.tokens)
    assert plain.lang_attention[:words].sum() == pytest.approx(1.0, abs=1e-5) and (plain.lang_attention[words:] < 1e-20).all()
    # per-block maps: one per SA/GA/RSA of the genotype, rows are distributions, padded keys get 0
    cfg_ops = [("enc", i, op) for i, op in enumerate(predictor.model.cfg.enc) if op != "FFN"] + \
              [("dec", i, op) for i, op in enumerate(predictor.model.cfg.dec) if op != "FFN"]
    assert [(b.part, b.position, b.op) for b in padded.blocks] == cfg_ops
    for block in padded.blocks:
        np.testing.assert_allclose(block.map.sum(axis=-1), 1.0, atol=1e-5)
        keys_padded = np.arange(block.map.shape[-1]) >= (words if block.op == "GA" or block.part == "enc" else n)
        assert (block.map[..., keys_padded] == 0).all(), (block.part, block.position, block.op)


def test_recording_attention_leaves_the_logits_unchanged(trained):
    model = trained["predictor"].model
    rng = np.random.RandomState(0)
    feats = paddle.to_tensor(np.maximum(rng.randn(2, 9, 2048), 0).astype("float32"))
    boxes = paddle.to_tensor(np.sort(rng.rand(2, 9, 4) * 300, axis=-1).astype("float32"))  # x2 >= x1, y2 >= y1
    ids = paddle.to_tensor(rng.randint(3, 20, size=(2, 14)).astype("int64"))
    with paddle.no_grad():
        plain = model(feats, None, boxes, ids).numpy()
        recorded, maps = model.forward_with_attention(feats, None, boxes, ids)
    assert np.array_equal(plain, recorded.numpy())
    assert maps.img.shape == [2, 9, 1] and maps.lang.shape == [2, 14, 1]
    assert all(layer.attention_record is None for layer in model.sublayers() if hasattr(layer, "attention_record"))


def error_line(code, err):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    return lines[0]


def ask_cli(trained, capsys, *extra, question="what colour is the dog?", feats=None, weights=None):
    feats = feats or feature_path(trained["data_root"], trained["by_family"]["exist"][0]["image_id"])
    weights = weights or trained["weights"]
    return run(["--RUN=predict", f"--CKPT_PATH={weights}", f"--FEATS={feats}", f"--QUESTION={question}",
                *trained["dirs"], *extra], capsys)


def test_error_feature_file_of_the_wrong_layout(trained, capsys, tmp_path):
    good = read_image_features(feature_path(trained["data_root"], trained["by_family"]["exist"][0]["image_id"]))
    bad = tmp_path / "narrow.npz"  # x [n, 1024]: GQA's regions-first layout, but 1024 wide
    n = len(good.region_feats)
    np.savez(bad, x=good.region_feats[:, :1024], bbox=good.boxes, image_w=good.image_w, image_h=good.image_h)
    line = error_line(*ask_cli(trained, capsys, feats=bad)[::2])
    assert f"feature file {bad}: its features are 1024 wide ('x' has shape [{n}, 1024]) but model.feat_size " \
           f"is 2048. Fix: set model.feat_size: 1024" in line
    square = tmp_path / "square.npz"  # x [n, n]: no layout at all
    np.savez(square, x=good.region_feats[:, :n], bbox=good.boxes, image_w=good.image_w, image_h=good.image_h)
    line = error_line(*ask_cli(trained, capsys, feats=square)[::2])
    assert str(square) in line and "expected [n, 2048]" in line


@pytest.mark.parametrize("question", ["", "  ?? "])
def test_error_empty_question(trained, capsys, question):
    line = error_line(*ask_cli(trained, capsys, question=question)[::2])
    assert "has no words" in line


def test_error_question_of_only_unknown_words(trained, capsys):
    line = error_line(*ask_cli(trained, capsys, question="Zebras? Giraffes!")[::2])
    assert "none of the words" in line and "Zebras? Giraffes!" in line


def test_error_checkpoint_without_vocabularies(trained, capsys, tmp_path):
    bare = tmp_path / "bare" / "model.pdparams"
    bare.parent.mkdir()
    shutil.copy(trained["weights"], bare)
    code, _, err = run(["--RUN=predict", f"--CKPT_PATH={bare}", "--MODEL=tiny", f"--DATA_ROOT={tmp_path / 'nothing'}",
                        f"--FEATS={feature_path(trained['data_root'], trained['by_family']['exist'][0]['image_id'])}",
                        "--QUESTION=is there a dog?", f"--RESULTS_DIR={tmp_path / 'results'}"], capsys)
    line = error_line(code, err)
    assert str(bare) in line and "--VOCAB" in line
    # ... and with the data files, the vocabularies are built from them as val/test do
    code, out, err = run(["--RUN=predict", f"--CKPT_PATH={bare}", "--MODEL=tiny", f"--DATA_ROOT={trained['data_root']}",
                          f"--FEATS={feature_path(trained['data_root'], trained['by_family']['exist'][0]['image_id'])}",
                          "--QUESTION=is there a dog?", f"--RESULTS_DIR={tmp_path / 'results'}"], capsys)
    assert code == 0, err


def test_vocabulary_that_does_not_fit_the_weights_is_refused(trained, capsys, tmp_path):
    with open(os.path.join(os.path.dirname(trained["weights"]), VOCAB_FILE)) as f:
        vocab = json.load(f)
    tokens, answers = len(vocab["token_to_ix"]), len(vocab["ans_to_ix"])
    vocab["token_to_ix"]["zebra"] = tokens
    wrong = tmp_path / "wrong_vocab.json"
    wrong.write_text(json.dumps(vocab))
    line = error_line(*ask_cli(trained, capsys, f"--VOCAB={wrong}")[::2])
    assert f"{tokens + 1} tokens and {answers} answers" in line and f"{tokens} tokens and {answers} answers" in line
    with pytest.raises(PredictError, match=f"{tokens + 1} tokens"):
        Predictor.from_checkpoint(trained["weights"], "tiny", vocab_path=str(wrong))


def test_synthetic_pictures_draw_each_object_at_its_box_in_its_colour(trained, tmp_path):
    from mmnas.data.synthetic import COLOUR_RGB
    vqa = trained["data_root"] / "vqa"
    with open(vqa / TRUTH_FILE) as f:
        images = json.load(f)["images"]
    checked = 0
    for image_id, truth in list(images.items())[:12]:
        folder = truth["split"]
        png = vqa / "images" / folder / f"COCO_{folder}_{int(image_id):012d}.png"
        with Image.open(png) as im:
            assert im.size == (truth["width"], truth["height"])
            pixels = np.asarray(im.convert("RGB"))
        # objects are drawn largest first: the smallest is on top; probe inside its lower edge
        # (its name is written at the top-left)
        area = lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])
        smallest = min(truth["objects"], key=area)
        x1, y1, x2, y2 = [int(round(v)) for v in smallest["box"]]
        assert tuple(pixels[y2 - 4, (x1 + x2) // 2]) == COLOUR_RGB[smallest["colour"]], (image_id, smallest)
        checked += 1
    assert checked == 12
    # same bytes again, with or without a pool
    sizes = dict(n_train_images=3, n_val_images=3, n_test_images=1, n_vg_images=1, seed=2, pictures=True)
    make_synthetic_vqa(str(tmp_path / "a"), **sizes)
    make_synthetic_vqa(str(tmp_path / "b"), workers=2, **sizes)
    for folder in ("train2014", "val2014", "test2015"):
        names = sorted(os.listdir(tmp_path / "a" / "vqa" / "images" / folder))
        assert names and names == sorted(os.listdir(tmp_path / "b" / "vqa" / "images" / folder))
        for name in names:
            assert (tmp_path / "a" / "vqa" / "images" / folder / name).read_bytes() == \
                (tmp_path / "b" / "vqa" / "images" / folder / name).read_bytes()
