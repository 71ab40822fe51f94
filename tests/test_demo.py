"""The web demo, driven like a user's browser drives it: tools/demo_web.py is started as its own
process on a free loopback port, and questions go to it over HTTP (gradio_client, the page's own
/ask endpoint). Its answers must be the Predictor's, its picture the attention picture."""
import glob
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

gradio = pytest.importorskip("gradio", reason="the web demo needs Gradio: pip install -e \".[demo]\"")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client comes with Gradio")

from mmnas.config import load_config  # noqa: E402
from mmnas.data import VOCAB_FILE, build_vocab  # noqa: E402
from mmnas.data.synthetic import make_synthetic_vqa  # noqa: E402
from mmnas.engine.attention_picture import attention_image, find_photo  # noqa: E402
from mmnas.checkpoint_files import atomic_save, to_numpy_state  # noqa: E402
from mmnas.engine.evaluate import write_json_atomic  # noqa: E402
from mmnas.engine.predict import Predictor  # noqa: E402
from mmnas.models import build_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = ("what is the biggest object?", "how many objects are there?", "is there a red car?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def other_address():
    """A non-loopback address of this machine, or None (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small synthetic dataset with pictures and a tiny model's weights with vocab.json beside them
    (untrained: the test compares the demo with the Predictor, not with the truth)."""
    root = tmp_path_factory.mktemp("demo")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=60, n_val_images=6, n_test_images=2, n_vg_images=2,
                       questions_per_image=3, seed=11, min_boxes=10, max_boxes=14, pictures=True)
    cfg = load_config(os.path.join(REPO, "configs", "vqa", "mmnasnet_tiny.yml"))
    vocab = build_vocab(str(data_root), str(root / "cache"), progress=False)
    assert vocab.answer_size >= 3
    import paddle
    paddle.seed(3)
    model = build_model(cfg.model, vocab.token_size, vocab.answer_size)
    path = root / "ckpt" / "epoch1.pdparams"
    atomic_save(to_numpy_state(model.state_dict()), str(path))
    write_json_atomic(vocab.to_dict(), str(root / "ckpt" / VOCAB_FILE))
    return str(path), str(data_root / "vqa" / "feats" / "val2014")


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    """tools/demo_web.py on a free loopback port with its own Gradio cache folder; yields (url, port,
    console log path, cache folder); stopped at the end."""
    path, feats_dir = weights
    port = free_port()
    console = tmp_path_factory.mktemp("console") / "demo.log"
    cache = tmp_path_factory.mktemp("gradio_cache")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    env["GRADIO_TEMP_DIR"] = str(cache)  # uploads land here (not in a folder other runs share)
    log = open(console, "w")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "demo_web.py"), "--MODEL=tiny",
                             f"--CKPT_PATH={path}", f"--FEATS_DIR={feats_dir}", f"--PORT={port}", "--TOPK=3"],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{console.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the demo did not listen within 300 s")
                time.sleep(0.5)
        yield url, port, console, cache
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[0], verbose=False, analytics_enabled=False)


def test_demo_answers_over_http_equal_the_predictors(weights, client):
    from PIL import Image
    path, feats_dir = weights
    predictor = Predictor.from_checkpoint(path, "tiny")
    names = sorted(n for n in os.listdir(feats_dir) if n.endswith(".npz"))
    for name, question in zip(names, QUESTIONS):
        table, picture_file, notes = client.predict(name, None, question, api_name="/ask")
        expected = predictor.ask(os.path.join(feats_dir, name), question, topk=3)
        assert table["headers"] == ["answer", "score (0 to 1)"]  # sigmoid scores: no percentages
        assert [row[0] for row in table["data"]] == expected.answers
        np.testing.assert_allclose([row[1] for row in table["data"]], expected.scores, atol=5e-4)
        assert f"**{expected.answers[0]}**" in notes
        # the picture is the attention picture of that answer on the image's photo
        photo = find_photo(os.path.join(feats_dir, name))
        assert photo is not None
        picture = np.asarray(Image.open(picture_file).convert("RGB"))
        reference = attention_image(expected, photo)
        np.testing.assert_array_equal(picture, reference)  # sent as PNG: not a pixel changed


def test_demo_answers_an_uploaded_feature_file_and_deletes_it(weights, server, client):
    path, feats_dir = weights
    name = sorted(os.listdir(feats_dir))[-1]
    upload = gradio_client.handle_file(os.path.join(feats_dir, name))
    table, _, _ = client.predict(None, upload, "what colour is the car?", api_name="/ask")
    expected = Predictor.from_checkpoint(path, "tiny").ask(os.path.join(feats_dir, name), "what colour is the car?")
    assert table["data"][0][0] == expected.answers[0]
    # the server's copy of the upload (Gradio's cache: <GRADIO_TEMP_DIR>/<hash>/<name>) is gone
    assert glob.glob(os.path.join(server[3], "*")) and not glob.glob(os.path.join(server[3], "*", name))


@pytest.mark.parametrize("question, fragment", [("", "has no words"),
                                                ("zyzzyva qwxv", "is in the model's vocabulary")])
def test_demo_answers_a_question_it_cannot_read_in_one_sentence(weights, server, client, question, fragment):
    name = sorted(os.listdir(weights[1]))[0]
    table, picture, notes = client.predict(name, None, question, api_name="/ask")
    assert notes.startswith("**Cannot answer:** ") and fragment in notes
    assert not table["data"] and picture is None
    assert "Traceback" not in server[2].read_text()  # nothing on the server's console


def test_demo_listens_on_loopback_only(server):
    address = other_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(OSError):
        socket.create_connection((address, server[1]), timeout=2).close()


def test_demo_without_weights_is_one_sentence_and_exit_2():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo_web.py"), "--MODEL=tiny",
                           f"--PORT={free_port()}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: the demo needs weights: --CKPT_PATH=file.pdparams, "
                                                    "or --CKPT_V and --CKPT_E.")


def test_demo_stopped_by_sigterm_says_so_in_one_line_and_exits_143(weights):
    """A service manager's SIGTERM (or a dropped terminal's SIGHUP) stops the demo as Ctrl-C
    does: one line naming the signal, exit 128 + its number, no traceback (neither Python's nor
    Paddle's C++ "Termination signal" one)."""
    import signal
    path, feats_dir = weights
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "demo_web.py"), "--MODEL=tiny",
                             f"--CKPT_PATH={path}", f"--FEATS_DIR={feats_dir}", f"--PORT={port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert [line for line in err.splitlines() if "interrupted" in line] == \
        ["web demo interrupted by SIGTERM; stopped"], err[-3000:]
    assert "Traceback" not in err and "Termination signal" not in out, (out + err)[-3000:]
