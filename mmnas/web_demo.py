"""A web page for asking the model: pick an image of a feature folder (its photo is shown when
there is one) or upload a feature file, type a question, see the top answers and the attention
picture. Built on Gradio (`pip install -e ".[demo]"`); started by tools/demo_web.py.

    python tools/demo_web.py --MODEL=tiny --CKPT_V=demo --CKPT_E=6 --FEATS_DIR=data/vqa/feats/val2014

The page only wraps engine/predict.py (Predictor: one model load, many questions) and
engine/attention_picture.py: its answers are exactly those of `--RUN=predict`. It listens on
127.0.0.1 unless --HOST says otherwise (anyone who can reach the port can use the model).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_LISTED = 500  # feature files offered in the image list (the first, in name order)
EXAMPLE_QUESTIONS = ("what is the biggest object?", "how many objects are there?", "is there a red car?",
                     "what colour is the tree?")


class DemoError(ValueError):
    """The demo cannot start (missing Gradio, an empty feature folder); the message says the fix."""


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
    file. Errors a user can fix come back as PredictError / DataError with one sentence."""

    def __init__(self, predictor, feats_dir: Optional[str] = None, topk: int = 5):
        self.predictor, self.feats_dir, self.topk = predictor, feats_dir, topk
        self.names = list_feature_files(feats_dir)

    def feature_path(self, name: Optional[str], upload: Optional[str]) -> str:
        from .engine.predict import PredictError
        if upload:
            return upload
        if name and name in self.names:
            return os.path.join(self.feats_dir, name)
        raise PredictError("choose an image from the list or upload a feature file (.npz) first.")

    def photo(self, name: Optional[str]) -> Optional[str]:
        """The photo of a listed feature file (attention_picture.find_photo), or None."""
        from .engine.attention_picture import find_photo
        return find_photo(os.path.join(self.feats_dir, name)) if name and name in self.names else None

    def ask(self, name: Optional[str], upload: Optional[str], question: str):
        """(answer, attention picture uint8 [H, W, 3]) for a listed image `name` or an uploaded .npz."""
        from .engine.attention_picture import attention_image, find_photo
        path = self.feature_path(name, upload)
        answer = self.predictor.ask(path, question, topk=self.topk)
        photo = None if upload else find_photo(path)
        return answer, attention_image(answer, photo)


def answer_scores(answer) -> Dict[str, float]:
    """{answer: score} in rank order, for a gr.Label."""
    return {a: float(s) for a, s in zip(answer.answers, answer.scores)}


def answer_notes(answer) -> str:
    """Markdown under the answers: the words the model could not read, and where the image came from."""
    notes = [f"**{answer.answers[0]}** ({answer.scores[0]:.3f}): scores are sigmoids of the logits, "
             f"one per answer, so they need not sum to 1."]
    unknown, cut = answer.unread_words()
    if unknown:
        notes.append(f"Not in the vocabulary (read as UNK): {', '.join(unknown)}.")
    if cut:
        notes.append(f"Past the 14th word, not read: {' '.join(cut)}.")
    top = answer.top_regions(1)[0]
    notes.append(f"{len(answer.image.boxes)} regions; the strongest (#1 in the picture) has weight "
                 f"{answer.image_attention[top]:.3f} of the image attention.")
    return "  \n".join(notes)


def build_demo(backend: DemoBackend, title: str = "MMNasNet: ask the model"):
    """The Gradio Blocks page. Its one API endpoint, /ask (name, upload, question) -> (answers,
    picture, notes), is what the page's button calls and what tests/test_demo.py calls over HTTP."""
    import gradio as gr
    from .data import DataError
    from .engine.predict import PredictError

    def ask(name, upload, question):
        try:
            answer, picture = backend.ask(name, upload, question)
        except (PredictError, DataError) as e:
            raise gr.Error(str(e)) from None
        return answer_scores(answer), picture, answer_notes(answer)

    def preview(name):
        return backend.photo(name)

    first = backend.names[0] if backend.names else None
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nPick an image (or upload a feature file), type a question, press **Ask**. "
                    f"The picture shows where the model looked (image attention) and which words it "
                    f"weighed (language attention).")
        with gr.Row():
            with gr.Column(scale=1):
                name = gr.Dropdown(choices=backend.names, value=first, label=f"image ({backend.feats_dir})"
                                   if backend.feats_dir else "image", interactive=bool(backend.names))
                photo = gr.Image(value=backend.photo(first), label="photo", interactive=False, height=260)
                question = gr.Textbox(label="question", value=EXAMPLE_QUESTIONS[0], lines=1, max_lines=1)
                button = gr.Button("Ask", variant="primary")
                gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=[question], label="questions to try")
                upload = gr.File(label="or upload a feature file (.npz: x [2048, n], bbox [n, 4], image_w, "
                                       "image_h); it is used instead of the image above", file_types=[".npz"],
                                 type="filepath", height=120)
            with gr.Column(scale=2):
                answers = gr.Label(label="answers", num_top_classes=backend.topk, elem_id="answers")
                picture = gr.Image(label="where the model looked", type="numpy", format="png", interactive=False,
                                   elem_id="attention")
                notes = gr.Markdown(elem_id="notes")
        name.change(preview, inputs=name, outputs=photo, api_name=False)
        button.click(ask, inputs=[name, upload, question], outputs=[answers, picture, notes], api_name="ask")
        question.submit(ask, inputs=[name, upload, question], outputs=[answers, picture, notes], api_name=False)
    return demo


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    from .config import MODEL_ALIASES
    p = argparse.ArgumentParser(description="Web demo: ask the model about an image in the browser (Gradio).")
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
    p.add_argument("--TOPK", type=int, default=5, help="answers shown (default 5)")
    p.add_argument("--HOST", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens it "
                        f"to the network)")
    p.add_argument("--PORT", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    return p.parse_args(argv)


def weights_of(args: argparse.Namespace) -> str:
    if args.CKPT_PATH:
        return args.CKPT_PATH
    if args.CKPT_V is None or args.CKPT_E is None:
        raise DemoError("the demo needs weights: --CKPT_PATH=file.pdparams, or --CKPT_V and --CKPT_E.")
    return os.path.join(args.CKPT_DIR, f"ckpt_{args.CKPT_V}", f"epoch{args.CKPT_E}.pdparams")


def make_backend(args: argparse.Namespace) -> DemoBackend:
    """Load the model once (Predictor.from_checkpoint) and list the feature folder."""
    from .config import load_config
    from .engine.predict import Predictor
    if args.TOPK < 1:
        raise DemoError(f"--TOPK must be at least 1, got {args.TOPK}.")
    cfg = load_config(args.MODEL)
    cfg.data.data_root = args.DATA_ROOT
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
    from .cli import expected_errors
    try:
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise DemoError("the web demo needs Gradio, which is not installed: pip install -e \".[demo]\"") from None
        backend = make_backend(args)
        demo = build_demo(backend)
    except (DemoError,) + expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"web demo: http://{args.HOST}:{args.PORT}/ ({len(backend.names)} images from {args.FEATS_DIR}, "
          f"vocabulary from {backend.predictor.vocab_source}); Ctrl-C stops it")
    # Gradio's own wait (without prevent_thread_lock) would take a signal as a normal end
    demo.queue().launch(server_name=args.HOST, server_port=args.PORT, share=False, show_error=True, quiet=True,
                        prevent_thread_lock=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        demo.close()
