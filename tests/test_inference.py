"""Evaluation engines (mmnas/inference): Paddle Inference with oneDNN must give the dygraph
model's logits (1e-4) and top answers for any batch size and region count, padding included;
evaluate() through both engines must write identical result files; the ONNX export must match
in onnxruntime; a bf16 request on a CPU without bf16 must stop with one sentence (exit 2).
"""
import json
import os
import sys

import numpy as np
import paddle
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmnas import cli  # noqa: E402
from mmnas.config import load_config  # noqa: E402
from mmnas.data import VQADataset, build_vocab  # noqa: E402
from mmnas.data.synthetic import make_synthetic_vqa  # noqa: E402
from mmnas.engine.evaluate import evaluate  # noqa: E402
from mmnas.inference import InferenceError, build_predictor, cpu_info, resolve_engine  # noqa: E402
from mmnas.inference.predictor import AUTO  # noqa: E402
from mmnas.models import MMNasNet  # noqa: E402
from mmnas.models.export import sample_inputs  # noqa: E402

T, A = 50, 20
# (batch, regions) in one predictor's life: shapes change between calls, one region, batch of one
SHAPES = [(4, 12), (3, 7), (6, 30), (1, 1), (2, 12)]


@pytest.fixture(scope="module")
def model():
    paddle.seed(1)
    m = MMNasNet(load_config("tiny").model, T, A)
    m.eval()
    return m


def dygraph_logits(model, feats, boxes, ids):
    with paddle.no_grad():
        return model(paddle.to_tensor(feats), None, paddle.to_tensor(boxes), paddle.to_tensor(ids)).numpy()


def test_inference_engine_matches_dygraph_on_changing_shapes(model):
    run = build_predictor(model, engine="inference", precision="fp32")
    for i, (batch, regions) in enumerate(SHAPES):
        feats, boxes, ids = sample_inputs(batch, regions, T, seed=10 + i)  # padded rows and tokens
        ref = dygraph_logits(model, feats, boxes, ids)
        out = run(feats, boxes, ids)
        assert out.shape == (batch, A)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
        assert np.array_equal(out.argmax(1), ref.argmax(1))


def test_padding_a_sample_leaves_its_inference_logits_unchanged(model):
    """The export keeps the padding mask: a sample padded with zero regions and zero tokens
    answers as the same sample cut to its own regions."""
    run = build_predictor(model, engine="inference")
    feats, boxes, ids = sample_inputs(1, 9, T, seed=4)
    padded = [np.concatenate([x, np.zeros((1, 21) + x.shape[2:], x.dtype)], 1) for x in (feats, boxes)]
    np.testing.assert_allclose(run(*padded, ids), run(feats, boxes, ids), atol=1e-5, rtol=0)


def test_dygraph_engine_accepts_numpy_and_tensors(model):
    run = build_predictor(model, engine="dygraph")
    feats, boxes, ids = sample_inputs(3, 8, T, seed=5)
    ref = dygraph_logits(model, feats, boxes, ids)
    np.testing.assert_array_equal(run(feats, boxes, ids), ref)
    np.testing.assert_array_equal(run(paddle.to_tensor(feats), paddle.to_tensor(boxes), paddle.to_tensor(ids)), ref)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic val split with 4..40 boxes per image, so ordered batches change n."""
    root = tmp_path_factory.mktemp("infer")
    data_root = str(root / "data")
    make_synthetic_vqa(data_root, n_train_images=10, n_val_images=24, n_test_images=5, n_vg_images=2,
                       questions_per_image=3, seed=0, min_boxes=4, max_boxes=40)
    vocab = build_vocab(data_root, str(root / "cache"), progress=False)
    return root, VQADataset(data_root, "val", vocab, progress=False), vocab


def test_evaluate_through_both_engines_writes_identical_results(synthetic):
    root, dataset, vocab = synthetic
    assert len(set(dataset.box_counts)) > 10
    paddle.seed(3)
    model = MMNasNet(load_config("tiny").model, vocab.token_size, vocab.answer_size)
    model.train()
    results = {}
    for engine in ("dygraph", "inference"):
        r = evaluate(model, dataset, name=engine, results_dir=str(root / "results"), batch_size=16,
                     save_pred=True, progress=False, engine=engine)
        assert model.training  # restored
        with open(r.result_path) as f:
            results[engine] = (json.load(f), np.load(r.pred_path)["logits"], r.scores)
    (answers_d, logits_d, scores_d), (answers_i, logits_i, scores_i) = results["dygraph"], results["inference"]
    assert answers_i == answers_d
    assert scores_i == scores_d
    np.testing.assert_allclose(logits_i, logits_d, atol=1e-4, rtol=0)


def test_model_max_token_is_one_number_for_dataset_export_and_predict(synthetic, tmp_path):
    """A YAML with model.max_token: 8 gives question_ids [8] from the dataset, an export whose
    question_ids input is [B, 8] (evaluated through it as through the dygraph model), and a
    predictor that reads 8 words, from the config or from the vocab.json training writes."""
    from mmnas.config import CONFIG_DIR
    from mmnas.data import VOCAB_FILE
    from mmnas.data.datasets import dataset_spec
    from mmnas.checkpoint_files import atomic_save, to_numpy_state
    from mmnas.engine.evaluate import write_json_atomic
    from mmnas.engine.predict import Predictor
    from mmnas.models.export import export_inference
    root, _, _ = synthetic
    path = tmp_path / "short.yml"
    path.write_text(f"base: {os.path.join(CONFIG_DIR, 'vqa', 'mmnasnet_tiny.yml')}\nmodel:\n  max_token: 8\n")
    cfg = load_config(str(path))
    cfg.data.data_root, cfg.results_dir = str(root / "data"), str(tmp_path / "results")
    spec = dataset_spec("vqa")
    vocab = spec.build_vocab(cfg, False)
    dataset = spec.open(cfg, "val", vocab, False)
    assert vocab.max_token == 8 and all(dataset[i][2].shape == (8,) for i in range(len(dataset)))

    paddle.seed(3)
    model = MMNasNet(cfg.model, vocab.token_size, vocab.answer_size)
    model.eval()
    export_inference(model, str(tmp_path / "export" / "model"), max_token=cfg.model.max_token)
    spec_of = {s.name: s.shape for s in paddle.jit.load(str(tmp_path / "export" / "model"))._input_spec()}
    assert spec_of["question_ids"] == (-1, 8)
    answers = {}
    for engine in ("dygraph", "inference"):  # the inference engine exports with model.max_token
        r = evaluate(model, dataset, name=engine, results_dir=str(tmp_path / "results"), batch_size=16,
                     progress=False, engine=engine)
        answers[engine] = json.load(open(r.result_path))
    assert answers["inference"] == answers["dygraph"]

    question = "is there a red cube to the left of the blue sphere in this picture"  # 15 words
    feats = dataset.image_path(0)
    weights = tmp_path / "run" / "epoch1.pdparams"
    os.makedirs(weights.parent)
    atomic_save(to_numpy_state(model.state_dict()), str(weights))
    from_config = Predictor.from_checkpoint(str(weights), cfg)  # no vocab.json: built with the config
    write_json_atomic(vocab.to_dict(), str(weights.parent / VOCAB_FILE))  # as training writes it
    from_vocab_json = Predictor.from_checkpoint(str(weights), "tiny")  # default config (14): vocab.json wins
    for predictor in (from_config, from_vocab_json):
        answer = predictor.ask(feats, question)
        assert predictor.max_token == 8 and [t.used for t in answer.tokens] == [True] * 8 + [False] * 7
        assert answer.lang_attention.shape == (8,)


def test_auto_engine_and_errors():
    assert resolve_engine("dygraph", "fp32") == "dygraph"
    assert resolve_engine("inference", "fp32") == "inference"
    assert resolve_engine("auto", "fp32") == AUTO  # measured when the model is built (test_engine_auto.py)
    assert resolve_engine("auto", "fp32", gpu=True) == "dygraph"
    for engine, precision, gpu in (("inference", "fp32", True), ("dygraph", "bf16", False), ("fast", "fp32", False)):
        with pytest.raises(InferenceError):
            resolve_engine(engine, precision, gpu)


def test_cpu_info_reads_the_flags():
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    info = cpu_info()
    assert info["avx512_bf16"] == ("avx512_bf16" in flags)
    assert info["amx_bf16"] == ("amx_bf16" in flags)
    assert info["bf16"] == (info["paddle_supports_bf16"] and ("avx512_bf16" in flags or "amx_bf16" in flags))


def test_bf16_request_on_a_cpu_without_bf16_exits_2_with_one_sentence(capsys, tmp_path):
    if cpu_info()["bf16"]:
        pytest.skip("this CPU has bf16: the refusal cannot happen here (test_bf16_runs_where_supported)")
    with pytest.raises(InferenceError, match="--PRECISION=bf16 needs a CPU with avx512_bf16 or AMX-BF16"):
        resolve_engine("auto", "bf16")
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"")  # never read: the check comes first
    code = cli.main(["--RUN=val", "--MODEL=tiny", f"--CKPT_PATH={weights}", "--PRECISION=bf16",
                     f"--RESULTS_DIR={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: --PRECISION=bf16 needs a CPU") and err.endswith("use --PRECISION=fp32.")
    assert len(err.splitlines()) == 1


def test_bf16_runs_where_supported(model):
    if not cpu_info()["bf16"]:
        pytest.skip(f"this CPU ({cpu_info()['model']}) has no avx512_bf16/AMX-BF16")
    run = build_predictor(model, engine="auto", precision="bf16")
    feats, boxes, ids = sample_inputs(8, 20, T, seed=6)
    out, ref = run(feats, boxes, ids), dygraph_logits(model, feats, boxes, ids)
    assert np.isfinite(out).all() and out.shape == ref.shape
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99  # bf16 rounding, not another network


def test_onnx_export_matches_in_onnxruntime(model, tmp_path):
    pytest.importorskip("paddle2onnx", reason="ONNX export needs paddle2onnx (pip install -e '.[onnx]')")
    pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install -e '.[onnx]')")
    from mmnas.inference.onnx_export import export_onnx, onnx_predictor
    path = export_onnx(model, str(tmp_path / "model.onnx"))
    run = onnx_predictor(path)
    for i, (batch, regions) in enumerate(SHAPES):
        feats, boxes, ids = sample_inputs(batch, regions, T, seed=20 + i)
        ref = dygraph_logits(model, feats, boxes, ids)
        np.testing.assert_allclose(run(feats, boxes, ids), ref, atol=1e-4, rtol=0)


def test_export_tool_writes_a_verified_onnx_file(model, tmp_path, capsys):
    pytest.importorskip("paddle2onnx", reason="ONNX export needs paddle2onnx (pip install -e '.[onnx]')")
    pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install -e '.[onnx]')")
    import importlib.util

    from mmnas.checkpoint_files import atomic_save
    ckpt = tmp_path / "w.pdparams"
    atomic_save({k: v.numpy() for k, v in model.state_dict().items()}, str(ckpt))
    spec = importlib.util.spec_from_file_location("export_inference", os.path.join(REPO, "tools", "export_inference.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    files = tool.main(["--MODEL", "tiny", "--CKPT_PATH", str(ckpt), "--out", str(tmp_path / "out" / "model"), "--onnx"])
    assert files["onnx"] == str(tmp_path / "out" / "model.onnx") and os.path.getsize(files["onnx"]) > 0
    out = capsys.readouterr().out
    assert "verified: Paddle Inference matches" in out and "verified: onnxruntime matches" in out


def test_bench_pytorch_network_gives_the_same_logits(model):
    """bench/eval.py times this PyTorch port against Paddle: it must be the same network."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from bench.torch_mmnasnet import TorchMMNasNet, load_paddle_weights
    net = load_paddle_weights(TorchMMNasNet(model.cfg, T, A), model)
    for i, (batch, regions) in enumerate(SHAPES):
        feats, boxes, ids = sample_inputs(batch, regions, T, seed=30 + i)
        with torch.no_grad():
            out = net(torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(out, dygraph_logits(model, feats, boxes, ids), atol=1e-4, rtol=0)
