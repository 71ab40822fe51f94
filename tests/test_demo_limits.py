"""The web demo's limits, without a browser: decompression bombs (a .npz and a PNG of zeros that
would unpack to gigabytes) refused from their headers with bounded memory, uploads deleted after
use, user errors answered on the page as one sentence, a busy port named with a free one, and
sigmoid scores never shown as percentages. The bombs are real: valid deflate streams of zeros
(one compressed block repeated), which zlib would unpack in full."""
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import paddle
import pytest

from mmnas.config import load_config
from mmnas.data import build_vocab
from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.engine.attention_picture import MAX_PHOTO_PIXELS, PhotoError, read_photo
from mmnas.engine.predict import Predictor
from mmnas.models import build_model
from mmnas.web_demo import (MAX_UNPACKED_BYTES, MAX_UPLOAD_BYTES, DemoBackend, DemoError, answer_notes, answer_rows,
                            bind_error, check_upload, score_heading)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 1 << 20


# ---- real decompression bombs, made in a second --------------------------------------------

def deflate_zeros(prefix: bytes, zeros: int) -> bytes:
    """A raw deflate stream of prefix + `zeros` zero bytes. After a full flush the compressor
    refers to nothing before, so the block of one CHUNK of zeros can be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(CHUNK)) + c.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(zeros, CHUNK)
    return head + block * count + c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)


def test_deflate_zeros_is_a_valid_stream():
    data = deflate_zeros(b"head", 3 * CHUNK + 5)
    assert zlib.decompress(data, -15) == b"head" + bytes(3 * CHUNK + 5)


def zip_bytes(members) -> bytes:
    """A .zip (deflated, no zip64) of {name: (raw deflate stream, uncompressed size, crc32)}."""
    out, central = b"", b""
    for name, (data, size, crc) in members.items():
        name_b = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, crc, len(data), size, len(name_b), 0)
        central += struct.pack("<IH", 0x02014B50, 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + name_b
        out += struct.pack("<I", 0x04034B50) + fields + name_b + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return out + central + end


def npy_header(shape, dtype="<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npz_bomb(path, n_regions: int) -> int:
    """A feature file whose x [2048, n_regions] float32 of zeros is stored compressed; returns the
    bytes it unpacks to."""
    header = npy_header((2048, n_regions))
    zeros = 2048 * n_regions * 4
    crc = zlib.crc32(header)
    for _ in range(zeros // CHUNK):
        crc = zlib.crc32(bytes(CHUNK), crc)
    crc = zlib.crc32(bytes(zeros % CHUNK), crc)
    with open(path, "wb") as f:
        f.write(zip_bytes({"x.npy": (deflate_zeros(header, zeros), len(header) + zeros, crc & 0xFFFFFFFF)}))
    return len(header) + zeros


def png_bomb(path, width: int, height: int) -> None:
    """A grey PNG of zeros (filter byte 0 + width zero pixels per row), every byte real."""
    raw = height * (width + 1)
    idat = b"\x78\xda" + deflate_zeros(b"", raw) + struct.pack(">I", ((raw % 65521) << 16) | 1)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def peak_memory(fn):
    """(the exception fn raised, peak bytes Python allocated meanwhile, growth of the max RSS in bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- the test asserts which one
        raised = e
    else:
        raised = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, peak, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024


def test_npz_bomb_is_refused_from_the_zip_directory_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.npz"
    unpacked = npz_bomb(path, 131072)  # 1 GiB of features
    assert os.path.getsize(path) < 2 * 2**20 < MAX_UPLOAD_BYTES  # small enough to pass the upload limit
    error, peak, rss_growth = peak_memory(lambda: check_upload(str(path)))
    assert isinstance(error, DemoError)
    assert str(error) == (f"the uploaded file would unpack to {unpacked / 2**30:.1f} GB; the demo takes feature "
                          f"files that unpack to at most {MAX_UNPACKED_BYTES / 2**20:.1f} MB.")
    assert peak < 4 * 2**20 and rss_growth < 64 * 2**20  # nothing of the gigabyte was unpacked


def test_npy_header_that_claims_more_than_the_member_is_refused(tmp_path):
    """A member whose directory size is small but whose .npy header declares 80 GB: numpy would
    allocate the header's shape before reading, so the header is judged too."""
    header = npy_header((2048, 10**7))
    data = header + bytes(64)
    with open(tmp_path / "liar.npz", "wb") as f:
        f.write(zip_bytes({"x.npy": (deflate_zeros(data, 0), len(data), zlib.crc32(data))}))
    error, peak, _ = peak_memory(lambda: check_upload(str(tmp_path / "liar.npz")))
    assert isinstance(error, DemoError) and "declares shape [2048, 10000000] (76.3 GB)" in str(error)
    assert peak < 4 * 2**20


def test_upload_over_the_byte_limit_or_not_a_npz_is_one_sentence(tmp_path):
    big = tmp_path / "big.npz"
    with open(big, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DemoError, match=r"^the uploaded file is 16\.0 MB; the demo takes feature files up to 16\.0 MB\.$"):
        check_upload(str(big))
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(DemoError, match="is not a feature file: upload a .npz with x"):
        check_upload(str(text))


@pytest.mark.parametrize("side", [9000, 20000])  # above our limit; above PIL's own (2 x 89.5 M pixels)
def test_png_bomb_is_refused_from_its_header_with_bounded_memory(tmp_path, side):
    path = tmp_path / "bomb.png"
    png_bomb(path, side, side)
    assert os.path.getsize(path) < 2**20 and side * side > MAX_PHOTO_PIXELS
    error, peak, rss_growth = peak_memory(lambda: read_photo(str(path)))
    assert isinstance(error, PhotoError), error
    assert str(path) in str(error)
    assert peak < 4 * 2**20 and rss_growth < 64 * 2**20  # decoded, it would be side^2 x 3 x 4 bytes


# ---- the page, on a tiny untrained model -------------------------------------------------------

@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    data_root = root / "data"
    make_synthetic_vqa(str(data_root), n_train_images=30, n_val_images=3, n_test_images=1, n_vg_images=1,
                       questions_per_image=3, seed=4, min_boxes=10, max_boxes=12, pictures=True)
    vocab = build_vocab(str(data_root), str(root / "cache"), progress=False)
    paddle.seed(5)
    model = build_model(load_config("tiny").model, vocab.token_size, vocab.answer_size)
    model.eval()
    return DemoBackend(Predictor(model, vocab), str(data_root / "vqa" / "feats" / "val2014"), topk=3)


def test_user_errors_are_answered_on_the_page(backend):
    name = backend.names[0]
    for question, fragment in [("", "has no words"), ("zyzzyva qwxv", "is in the model's vocabulary")]:
        rows, picture, notes = backend.page(name, None, question)
        assert rows == [] and picture is None
        assert notes.startswith("**Cannot answer:** ") and fragment in notes and "\n" not in notes
    rows, picture, notes = backend.page(None, None, "what is it?")
    assert notes == "**Cannot answer:** choose an image from the list or upload a feature file (.npz) first."


def test_upload_is_deleted_after_use_and_its_features_kept_for_more_questions(backend, tmp_path):
    upload = tmp_path / "gradio" / "abc123" / "mine.npz"
    upload.parent.mkdir(parents=True)
    shutil.copy(os.path.join(backend.feats_dir, backend.names[1]), upload)
    first = backend.page(None, str(upload), "what colour is the car?")
    assert not upload.exists()  # read once, deleted
    listed = backend.page(backend.names[1], None, "what colour is the car?")
    assert first[0] == listed[0] and len(first[0]) == 3  # the same answers as the listed file
    again = backend.page(None, str(upload), "how many objects are there?")
    assert again[0] and again[2].startswith("**")  # answered from memory
    # a bad upload is deleted too, and an unknown one is asked for again
    bomb = tmp_path / "bomb.npz"
    npz_bomb(bomb, 32768)
    rows, _, notes = backend.page(None, str(bomb), "what is it?")
    assert rows == [] and "would unpack to 256.0 MB" in notes and not bomb.exists()
    _, _, notes = backend.page(None, str(tmp_path / "never.npz"), "what is it?")
    assert "upload it again" in notes


def test_a_photo_bomb_beside_a_listed_image_is_answered_on_the_page(backend, tmp_path):
    from mmnas.engine.attention_picture import find_photo
    name = backend.names[2]
    photo = find_photo(os.path.join(backend.feats_dir, name))
    saved = tmp_path / "saved.png"
    shutil.copy(photo, saved)
    try:
        png_bomb(photo, 9000, 9000)
        rows, picture, notes = backend.page(name, None, "what is it?")
    finally:
        shutil.copy(saved, photo)
    assert rows == [] and picture is None and "9000 x 9000 pixels" in notes


def test_sigmoid_scores_are_scores_and_softmax_scores_are_percentages(backend):
    name = backend.names[0]
    sigmoid = backend.predictor.ask(os.path.join(backend.feats_dir, name), "what is it?", topk=3)
    assert sigmoid.score_kind == "sigmoid"
    assert answer_rows(sigmoid) == [[a, round(s, 3)] for a, s in zip(sigmoid.answers, sigmoid.scores)]
    notes = answer_notes(sigmoid)
    assert "%" not in notes and "scores, not probabilities" in notes
    assert score_heading(False) == "score (0 to 1)" and score_heading(True) == "probability (%)"
    softmax = Predictor(backend.predictor.model, backend.predictor.vocab, softmax_scores=True).ask(
        os.path.join(backend.feats_dir, name), "what is it?", topk=backend.predictor.vocab.answer_size)
    rows = answer_rows(softmax)
    assert softmax.score_kind == "softmax" and abs(sum(r[1] for r in rows) - 100.0) < 0.05 * len(rows)
    assert f"({100 * softmax.scores[0]:.1f}%)" in answer_notes(softmax)


# ---- a busy port ------------------------------------------------------------------------------

def test_busy_port_is_one_sentence_offering_a_free_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert bind_error("127.0.0.1", port) is not None
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo_web.py"), "--MODEL=tiny",
                               "--CKPT_PATH=missing.pdparams", f"--PORT={port}"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    prefix = f"error: port {port} on 127.0.0.1 is in use (another demo?); use --PORT="
    assert line.startswith(prefix) and line.endswith(", which is free."), line
    offered = int(line[len(prefix):-len(", which is free.")])
    assert offered > port
    with socket.socket() as s:  # the offered port is really free
        s.bind(("127.0.0.1", offered))
