"""A web page for asking the model: pick an image of a feature folder (its photo is shown when
there is one) or upload a feature file, type a question, see the top answers and the attention
picture. Built on Gradio (`pip install -e ".[demo]"`); started by tools/demo_web.py.

    python tools/demo_web.py --MODEL=tiny --CKPT_V=demo --CKPT_E=6 --FEATS_DIR=data/vqa/feats/val2014

The page follows the model's task (tasks/): a grounding model (RefCOCO) takes a referring
expression and shows the chosen box and the runners-up (engine/predict_grounding.py); a matching
model (Flickr30K) ranks the listed images for a caption (engine/predict_matching.py).

The page only wraps engine/predict.py (Predictor: one model load, many questions) and
engine/attention_picture.py: its answers are exactly those of `--RUN=predict`. It listens on
127.0.0.1 unless --HOST says otherwise (anyone who can reach the port can use the model).

Uploads are bounded before they are read (MAX_UPLOAD_BYTES on the file, MAX_UNPACKED_BYTES on
what its .npz members declare they unpack to, checked from the zip directory and the .npy
headers), read once into memory and deleted. Errors a user can fix come back on the page as one
sentence, with no traceback on the server's console.
"""
from __future__ import annotations

import argparse
import collections
import errno
import os
import socket
import sys
import time
import zipfile
from typing import List, Optional, Tuple


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_LISTED = 500  # feature files offered in the image list (the first, in name order)
MAX_UPLOAD_BYTES = 16 * 2**20  # an uploaded feature file (100 regions x 2048 float32 is 0.8 MB)
MAX_UNPACKED_BYTES = 64 * 2**20  # what its arrays unpack to, from the zip directory and .npy headers
KEPT_UPLOADS = 8  # uploads kept in memory (after their file is deleted) for further questions
NEXT_PORTS = 100  # ports after a busy --PORT tried for the free one the message offers
EXAMPLE_QUESTIONS = ("what is the biggest object?", "how many objects are there?", "is there a red car?",
                     "what colour is the tree?")


class DemoError(ValueError):
    """The demo cannot start (missing Gradio, an empty feature folder, a busy port) or cannot use an
    upload; the message says the fix."""


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


def check_upload(path: str, max_bytes: int = MAX_UPLOAD_BYTES, max_unpacked: int = MAX_UNPACKED_BYTES) -> None:
    """DemoError unless `path` is a .npz of at most max_bytes whose members unpack to at most
    max_unpacked bytes, judged without unpacking anything: the sizes the zip directory declares
    (zipfile never reads a member past them) and the array sizes the .npy headers declare (numpy
    allocates those before reading). A small file of zeros that would unpack to gigabytes is
    refused here, before np.load."""
    import numpy as np
    size = os.path.getsize(path)
    if size > max_bytes:
        raise DemoError(f"the uploaded file is {megabytes(size)}; the demo takes feature files up to "
                        f"{megabytes(max_bytes)}.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > max_unpacked:
                raise DemoError(f"the uploaded file would unpack to {megabytes(declared)}; the demo takes feature "
                                f"files that unpack to at most {megabytes(max_unpacked)}.")
            for member in members:
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)  # numpy writes 3.0 only for unicode field names
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}[version]
                    shape, _, dtype = read_header(f)
                array_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if array_bytes > max_unpacked:
                    raise DemoError(f"the uploaded file's array {member.filename[:-len('.npy')]!r} declares shape "
                                    f"{list(shape)} ({megabytes(array_bytes)}); the demo takes feature files that "
                                    f"unpack to at most {megabytes(max_unpacked)}.")
    except DemoError:
        raise
    except Exception:  # BadZipFile, a member that is not .npy, a damaged header, ...
        raise DemoError("the uploaded file is not a feature file: upload a .npz with x [2048, n], bbox [n, 4], "
                        "image_w and image_h (numpy.savez).") from None


def remove_upload(path: str) -> None:
    """Delete an upload after use; one already gone is fine."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def list_feature_files(feats_dir: Optional[str], limit: int = MAX_LISTED) -> List[str]:
    """File names of the .npz feature files in feats_dir, in name order (the first `limit`)."""
    if not feats_dir:
        return []
    if not os.path.isdir(feats_dir):
        raise DemoError(f"--FEATS_DIR={feats_dir} is not a folder; give a folder of .npz feature files, "
                        f"e.g. data/vqa/feats/val2014.")
    names = sorted(n for n in os.listdir(feats_dir) if n.endswith(".npz"))
    if not names:
        raise DemoError(f"--FEATS_DIR={feats_dir} holds no .npz feature files.")
    return names[:limit]


class DemoBackend:
    """What the page does, without Gradio: answer a question about a listed or uploaded feature
    file. Errors a user can fix come back as DemoError / PredictError / DataError (user_errors())
    with one sentence."""

    task = "answer"  # tasks/: which page build_demo shows

    def __init__(self, predictor, feats_dir: Optional[str] = None, topk: int = 5):
        self.predictor, self.feats_dir, self.topk = predictor, feats_dir, topk
        self.names = list_feature_files(feats_dir)
        # upload path -> its ImageFeatures, read once (the file is deleted), the latest KEPT_UPLOADS;
        # Gradio names an upload by its content's hash, so the same path is the same file
        self.uploads = collections.OrderedDict()

    def read_upload(self, upload: str):
        """The ImageFeatures of an uploaded .npz (checked by check_upload before reading); the file
        is deleted whether or not it could be used."""
        from .engine.predict import read_image_features
        if upload in self.uploads:
            self.uploads.move_to_end(upload)
            return self.uploads[upload]
        if not os.path.isfile(upload):
            raise DemoError("the uploaded file is no longer on the server (uploads are deleted after use "
                            "and only the latest few are kept); upload it again.")
        try:
            check_upload(upload)
            image = read_image_features(upload, self.predictor.feat_size)
        finally:
            remove_upload(upload)
        image.path = None  # the temporary name means nothing to the user
        self.uploads[upload] = image
        while len(self.uploads) > KEPT_UPLOADS:
            self.uploads.popitem(last=False)
        return image

    def features(self, name: Optional[str], upload: Optional[str]):
        """(features for Predictor.ask, the photo or None) of a listed image or an upload."""
        from .engine.attention_picture import find_photo
        if upload:
            return self.read_upload(upload), None
        if name and name in self.names:
            path = os.path.join(self.feats_dir, name)
            return path, find_photo(path)
        raise DemoError("choose an image from the list or upload a feature file (.npz) first.")

    def photo(self, name: Optional[str]) -> Optional[str]:
        """The photo of a listed feature file (attention_picture.find_photo), or None."""
        from .engine.attention_picture import find_photo
        return find_photo(os.path.join(self.feats_dir, name)) if name and name in self.names else None

    def ask(self, name: Optional[str], upload: Optional[str], question: str):
        """(answer, attention picture uint8 [H, W, 3]) for a listed image `name` or an uploaded .npz."""
        from .engine.attention_picture import attention_image
        features, photo = self.features(name, upload)
        answer = self.predictor.ask(features, question, topk=self.topk)
        return answer, attention_image(answer, photo)

    def page(self, name: Optional[str], upload: Optional[str], question: str):
        """What the page shows: (answer rows, picture or None, notes markdown). A user error is
        answered in the notes, as one sentence, instead of raised."""
        try:
            answer, picture = self.ask(name, upload, question)
        except user_errors() as e:
            return [], None, f"**Cannot answer:** {e}"
        return answer_rows(answer), picture, answer_notes(answer)


class GroundingBackend(DemoBackend):
    """The grounding page without Gradio: a referring expression about a listed or uploaded
    feature file -> the chosen box and the runners-up, as `--RUN=predict` gives them
    (engine/predict_grounding.py: Grounder, pick_list, box_figure). `predictor` is a Grounder."""

    task = "grounding"

    def ground(self, name: Optional[str], upload: Optional[str], expression: str):
        """(image, picks {regions, region_scores, boxes}, words, unknown words, photo or None)."""
        from .engine.predict import read_image_features
        features, photo = self.features(name, upload)
        image = read_image_features(features, self.predictor.feat_size) if isinstance(features, str) else features
        words, unknown, picks = self.predictor.ground(image, expression)
        return image, picks, words, unknown, photo

    def page(self, name: Optional[str], upload: Optional[str], expression: str):
        """(rows [rank, region, probability %, x1, y1, x2, y2], picture uint8 [H, W, 3], notes)."""
        from .engine.predict_grounding import box_figure, pick_list, top_picks
        try:
            image, picks, words, unknown, photo = self.ground(name, upload, expression)
        except user_errors() as e:
            return [], None, f"**Cannot ground:** {e}"
        shown = min(self.topk, len(picks["regions"]))
        listed = pick_list(picks, shown)
        rows = [[rank + 1, pick["region"], round(100.0 * pick["probability"], 1)] + pick["box"]
                for rank, pick in enumerate(listed)]
        picture = figure_pixels(box_figure(image, top_picks(picks, shown), expression, photo))
        notes = [f"The chosen box (red) is region {listed[0]['region']} of {len(image.boxes)} "
                 f"({100.0 * listed[0]['probability']:.1f} %); the dashed boxes are the runners-up, the grey ones "
                 f"every other proposal. Probabilities are the softmax over the regions."]
        if unknown:
            notes.append(f"Not in the vocabulary (read as UNK): {', '.join(unknown)}.")
        max_token = self.predictor.max_token
        if len(words) > max_token - 1:
            notes.append(f"Past the {max_token - 1}th word, not read: {' '.join(words[max_token - 1:])}.")
        return rows, picture, "  \n".join(notes)


class RetrievalBackend(DemoBackend):
    """The retrieval page without Gradio: a caption ranks the listed feature files, as
    `--RUN=predict --FEATS=<folder> --QUESTION=<caption>` ranks a folder (engine/predict_matching.py:
    Matcher, rank_order, match_probabilities). `predictor` is a Matcher."""

    task = "matching"

    def __init__(self, predictor, feats_dir: Optional[str] = None, topk: int = 5):
        super().__init__(predictor, feats_dir, topk)
        if not self.names:
            raise DemoError("a matching model ranks the images of a folder: give --FEATS_DIR=<folder of .npz "
                            "feature files>.")
        self.images = None  # the listed ImageFeatures, read at the first caption

    def rank(self, caption: str):
        """(order of the listed images, best first: the top `topk`; match probabilities [len(names)])."""
        from .engine.predict import read_image_features
        from .data import tokenize
        from .engine.predict_matching import match_probabilities, rank_order
        if not tokenize(caption or ""):  # said here for a caption (read_tokens speaks of --QUESTION)
            raise DemoError(f"the caption {caption!r} has no words; type one, e.g. \"a red cup and a blue dog\".")
        if self.images is None:
            self.images = [read_image_features(os.path.join(self.feats_dir, n), self.predictor.feat_size)
                           for n in self.names]
        logits = self.predictor.image_logits(self.images, caption)
        return rank_order(logits, self.topk), match_probabilities(logits)

    def page(self, caption: str):
        """(rows [rank, image, match probability], the best image's photo or None, notes)."""
        try:
            order, probs = self.rank(caption)
        except user_errors() as e:
            return [], None, f"**Cannot rank:** {e}"
        rows = [[place, self.names[k], round(float(probs[k]), 4)] for place, k in enumerate(order, 1)]
        notes = (f"The top {len(rows)} of {len(self.names)} images for this caption. The numbers are match "
                 f"probabilities, sigmoid(score) of each image-caption pair on its own (they need not sum to 1).")
        return rows, self.photo(self.names[order[0]]), notes


def figure_pixels(fig):
    """A matplotlib figure as uint8 [H, W, 3] (the figure is closed)."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def user_errors() -> Tuple[type, ...]:
    """The errors a user of the page can fix (the command line's, the demo's and a photo's)."""
    from .cli import expected_errors
    from .engine.attention_picture import PhotoError
    return (DemoError, PhotoError) + expected_errors()


def score_heading(softmax: bool) -> str:
    """The heading of the score column: softmax outputs are probabilities (shown in %), sigmoid
    outputs are one independent 0..1 score per answer (not probabilities)."""
    return "probability (%)" if softmax else "score (0 to 1)"


def answer_rows(answer) -> List[list]:
    """[[answer, score], ...] in rank order; a softmax probability in % (one decimal), a sigmoid
    score as it is (three decimals)."""
    if answer.score_kind == "softmax":
        return [[a, round(100.0 * s, 1)] for a, s in zip(answer.answers, answer.scores)]
    return [[a, round(s, 3)] for a, s in zip(answer.answers, answer.scores)]


def answer_notes(answer) -> str:
    """Markdown under the answers: what the scores are, the words the model could not read, and
    where the image came from."""
    from .engine.predict import format_score, score_meaning
    notes = [f"**{answer.answers[0]}** ({format_score(answer.scores[0], answer.score_kind)}). The numbers are "
             f"{score_meaning(answer.score_kind)}"]
    unknown, cut = answer.unread_words()
    if unknown:
        notes.append(f"Not in the vocabulary (read as UNK): {', '.join(unknown)}.")
    if cut:
        notes.append(f"Past the 14th word, not read: {' '.join(cut)}.")
    top = answer.top_regions(1)[0]
    notes.append(f"{len(answer.image.boxes)} regions; the strongest (#1 in the picture) has weight "
                 f"{answer.image_attention[top]:.3f} of the image attention.")
    return "  \n".join(notes)


def build_demo(backend: DemoBackend, title: Optional[str] = None):
    """The Gradio Blocks page of the backend's task (answer, grounding or matching)."""
    pages = {"answer": (build_answer_page, "MMNasNet: ask the model"),
             "grounding": (build_grounding_page, "MMNasNet: find what an expression names"),
             "matching": (build_retrieval_page, "MMNasNet: find the images for a caption")}
    build, default_title = pages[backend.task]
    return build(backend, title or default_title)


def page_blocks(gr, title: str):
    """The Blocks of every page: no usage reports; uploads are deleted once read
    (DemoBackend.read_upload) and delete_cache also removes, every 15 minutes, those older than 15
    minutes that nobody asked about, and pictures already sent."""
    return gr.Blocks(title=title, analytics_enabled=False, delete_cache=(900, 900))


def upload_box(gr):
    """The upload field of the answer and grounding pages."""
    return gr.File(label=f"or upload a feature file (.npz: x [2048, n], bbox [n, 4], image_w, image_h; at most "
                         f"{megabytes(MAX_UPLOAD_BYTES)}); it is used instead of the image above",
                   file_types=[".npz"], type="filepath", height=120)


def image_list(gr, backend: DemoBackend):
    """(the image dropdown, the photo of its choice), the left column's top of the answer and grounding pages."""
    first = backend.names[0] if backend.names else None
    name = gr.Dropdown(choices=backend.names, value=first, label=f"image ({backend.feats_dir})"
                       if backend.feats_dir else "image", interactive=bool(backend.names))
    photo = gr.Image(value=backend.photo(first), label="photo", interactive=False, height=260)
    name.change(backend.photo, inputs=name, outputs=photo, api_name=False)
    return name, photo


def build_grounding_page(backend: GroundingBackend, title: str):
    """API endpoint /ground (name, upload, expression) -> (boxes table, picture, notes)."""
    import gradio as gr
    with page_blocks(gr, title) as demo:
        gr.Markdown(f"## {title}\nPick an image (or upload a feature file), type a referring expression, press "
                    f"**Find**. The picture shows the chosen box (red), the runners-up (dashed) and every proposal "
                    f"(grey).")
        with gr.Row():
            with gr.Column(scale=1):
                name, _ = image_list(gr, backend)
                expression = gr.Textbox(label="referring expression", value="the red cup", lines=1, max_lines=1)
                button = gr.Button("Find", variant="primary")
                upload = upload_box(gr)
            with gr.Column(scale=2):
                boxes = gr.Dataframe(headers=["rank", "region", "probability (%)", "x1", "y1", "x2", "y2"],
                                     datatype=["number"] * 7, label="chosen box and runners-up (pixels)",
                                     interactive=False, elem_id="boxes")
                picture = gr.Image(label="the chosen box", type="numpy", format="png", interactive=False,
                                   elem_id="grounding")
                notes = gr.Markdown(elem_id="notes")
        for event, api_name in ((button.click, "ground"), (expression.submit, False)):
            event(backend.page, inputs=[name, upload, expression], outputs=[boxes, picture, notes], api_name=api_name)
    return demo


def build_retrieval_page(backend: RetrievalBackend, title: str):
    """API endpoint /rank (caption) -> (ranking table, the best image's photo, notes)."""
    import gradio as gr
    with page_blocks(gr, title) as demo:
        gr.Markdown(f"## {title}\nType a caption, press **Rank**: the {len(backend.names)} images of "
                    f"{backend.feats_dir} are ranked by how well they match it.")
        with gr.Row():
            with gr.Column(scale=1):
                caption = gr.Textbox(label="caption", value="a red cup and a blue dog", lines=1, max_lines=1)
                button = gr.Button("Rank", variant="primary")
                best = gr.Image(label="the best image's photo (when there is one)", interactive=False, height=260)
            with gr.Column(scale=2):
                ranking = gr.Dataframe(headers=["rank", "image", "match probability"],
                                       datatype=["number", "str", "number"], label=f"top {backend.topk} images",
                                       interactive=False, elem_id="ranking")
                notes = gr.Markdown(elem_id="notes")
        for event, api_name in ((button.click, "rank"), (caption.submit, False)):
            event(backend.page, inputs=[caption], outputs=[ranking, best, notes], api_name=api_name)
    return demo


def build_answer_page(backend: DemoBackend, title: str):
    """The question page. Its one API endpoint, /ask (name, upload, question) -> (answers,
    picture, notes), is what the page's button calls and what tests/test_demo.py calls over HTTP."""
    import gradio as gr
    with page_blocks(gr, title) as demo:
        gr.Markdown(f"## {title}\nPick an image (or upload a feature file), type a question, press **Ask**. "
                    f"The picture shows where the model looked (image attention) and which words it "
                    f"weighed (language attention).")
        with gr.Row():
            with gr.Column(scale=1):
                name, _ = image_list(gr, backend)
                question = gr.Textbox(label="question", value=EXAMPLE_QUESTIONS[0], lines=1, max_lines=1)
                button = gr.Button("Ask", variant="primary")
                gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=[question], label="questions to try")
                upload = upload_box(gr)
            with gr.Column(scale=2):
                answers = gr.Dataframe(headers=["answer", score_heading(backend.predictor.softmax_scores)],
                                       datatype=["str", "number"], label="answers", interactive=False,
                                       elem_id="answers")
                picture = gr.Image(label="where the model looked", type="numpy", format="png", interactive=False,
                                   elem_id="attention")
                notes = gr.Markdown(elem_id="notes")
        button.click(backend.page, inputs=[name, upload, question], outputs=[answers, picture, notes],
                     api_name="ask")
        question.submit(backend.page, inputs=[name, upload, question], outputs=[answers, picture, notes],
                        api_name=False)
    return demo


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    from .config import MODEL_ALIASES
    p = argparse.ArgumentParser(description="Web demo: ask the model about an image in the browser (Gradio); a "
                                             "grounding model finds the box an expression names, a matching model "
                                             "ranks the images for a caption.")
    p.add_argument("--MODEL", default="small", help=f"config of the weights: {' | '.join(MODEL_ALIASES)} | "
                                                    f"a YAML path (default small)")
    p.add_argument("--CKPT_PATH", help="weights file (.pdparams)")
    p.add_argument("--CKPT_V", help="version of a training run (with --CKPT_E): ckpt/ckpt_<V>/epoch<E>.pdparams")
    p.add_argument("--CKPT_E", type=int, help="epoch of that run")
    p.add_argument("--CKPT_DIR", default="ckpt", help="where --CKPT_V runs are (default ckpt)")
    p.add_argument("--FEATS_DIR", help="a folder of .npz feature files to pick images from, e.g. "
                                       "data/vqa/feats/val2014 (without it: upload only)")
    p.add_argument("--VOCAB", help="vocabulary JSON (default: vocab.json beside the weights, else built "
                                   "from --DATA_ROOT)")
    p.add_argument("--DATA_ROOT", default="./data", help="data folder for building the vocabularies (default ./data)")
    p.add_argument("--TOPK", type=int, default=5, help="answers shown (grounding: boxes, matching: images; "
                                                       "default 5)")
    p.add_argument("--HOST", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens it "
                        f"to the network)")
    p.add_argument("--PORT", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    return p.parse_args(argv)


def bind_error(host: str, port: int) -> Optional[OSError]:
    """Why a server could not listen on host:port now (bound as uvicorn binds, then released), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def check_port(host: str, port: int) -> None:
    """DemoError naming a busy --PORT and the next free port after it, or why host:port cannot be used."""
    error = bind_error(host, port)
    if error is None:
        return
    if error.errno != errno.EADDRINUSE:
        raise DemoError(f"cannot listen on {host}:{port} ({error.strerror}); check --HOST and --PORT "
                        f"(ports below 1024 need root).")
    free = next((p for p in range(port + 1, min(port + 1 + NEXT_PORTS, 65536)) if bind_error(host, p) is None), None)
    offer = f"use --PORT={free}, which is free" if free else "choose a free one with --PORT"
    raise DemoError(f"port {port} on {host} is in use (another demo?); {offer}.")


def weights_of(args: argparse.Namespace) -> str:
    if args.CKPT_PATH:
        return args.CKPT_PATH
    if args.CKPT_V is None or args.CKPT_E is None:
        raise DemoError("the demo needs weights: --CKPT_PATH=file.pdparams, or --CKPT_V and --CKPT_E.")
    return os.path.join(args.CKPT_DIR, f"ckpt_{args.CKPT_V}", f"epoch{args.CKPT_E}.pdparams")


def make_backend(args: argparse.Namespace) -> DemoBackend:
    """Load the model once (the task's: Predictor, Grounder or Matcher) and list the feature folder."""
    from .config import load_config
    from .engine.predict import Predictor
    from .engine.predict_grounding import Grounder
    from .engine.predict_matching import Matcher
    from .tasks import task_of
    if args.TOPK < 1:
        raise DemoError(f"--TOPK must be at least 1, got {args.TOPK}.")
    cfg = load_config(args.MODEL)
    cfg.data.data_root = args.DATA_ROOT
    task = task_of(cfg).name
    if task == "grounding":
        return GroundingBackend(Grounder(cfg, weights_of(args), args.VOCAB), args.FEATS_DIR, args.TOPK)
    if task == "matching":
        return RetrievalBackend(Matcher(cfg, weights_of(args), args.VOCAB), args.FEATS_DIR, args.TOPK)
    predictor = Predictor.from_checkpoint(weights_of(args), cfg, vocab_path=args.VOCAB)
    return DemoBackend(predictor, args.FEATS_DIR, args.TOPK)


def main(argv=None) -> int:
    args = parse_args(argv)
    from . import runtime
    from .engine.interrupt import exit_status, interrupted_by, signal_of, stop_on_signals
    runtime.hold_stop_signals()  # until Paddle's C++ SIGTERM handler is replaced (as in cli.main)
    try:
        runtime.configure()
        stop_on_signals()  # Ctrl-C, SIGTERM and SIGHUP stop the demo with one line, at any moment
        runtime.release_stop_signals()
        return serve(args)
    except KeyboardInterrupt as e:
        print(f"web demo {interrupted_by(signal_of(e))}; stopped", file=sys.stderr)
        return exit_status(signal_of(e))


def serve(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports to gradio.app
    import logging
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    try:
        check_port(args.HOST, args.PORT)  # before the slow imports and the model load
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise DemoError("the web demo needs Gradio, which is not installed: pip install -e \".[demo]\"") from None
        backend = make_backend(args)
        demo = build_demo(backend)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"web demo: http://{args.HOST}:{args.PORT}/ ({len(backend.names)} images from {args.FEATS_DIR}, "
          f"vocabulary from {backend.predictor.vocab_source}); Ctrl-C stops it")
    # Gradio's own wait (without prevent_thread_lock) would take a signal as a normal end
    try:
        demo.queue().launch(server_name=args.HOST, server_port=args.PORT, share=False, show_error=True, quiet=True,
                            max_file_size=MAX_UPLOAD_BYTES, prevent_thread_lock=True)
    except OSError:  # taken between the check and the launch
        try:
            check_port(args.HOST, args.PORT)
        except DemoError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    try:
        while True:
            time.sleep(3600)
    finally:
        demo.close()
