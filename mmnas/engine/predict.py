"""Ask the model: one typed question about one image, with the attention that produced the answer.

    predictor = Predictor.from_checkpoint("ckpt/ckpt_demo/epoch6.pdparams", "tiny")  # load once
    answer = predictor.ask("data/vqa/feats/val2014/COCO_val2014_000002000001.jpg.npz",
                           "what colour is the dog?")                                 # ask many
    answer.answers, answer.scores, answer.image_attention, answer.lang_attention

Behind `python run.py --RUN=predict` (run_predict) and usable from Python. The vocabularies come
from the `vocab.json` training writes beside its checkpoints, an explicit file, or are built from
the data files as --RUN=val/test build them; one that does not fit the weights is refused.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np
import paddle

from ..config import ModelConfig, RunConfig, load_config
from ..data import VOCAB_FILE, DataError, Vocab, encode_question, load_npz, read_vocab_file, tokenize
from ..data.vocab import vocab_beside
from ..data.datasets import dataset_spec
from ..data.features import FEAT_DIM, BadFeatureFile
from ..tasks import task_named
from ..checkpoint_files import extract_state_dict, load_weights, safe_load


class PredictError(ValueError):
    """A question, feature file or vocabulary predict cannot use; the message says which and the fix."""


@dataclass
class Token:
    """One word of the question as the model reads it."""
    word: str
    known: bool  # in the token vocabulary; an unknown word is read as UNK
    used: bool  # among the first max_token words (the model reads no more)


@dataclass
class BlockMap:
    """The attention of one SA/GA/RSA block for this question: map [heads, Nq, Nk], rows sum to 1.
    Encoder SA: words x words (T = max_token positions); decoder SA/RSA: regions x regions; GA:
    regions x words. Padded keys get exactly 0."""
    part: str  # "enc" or "dec"
    position: int  # index in the genotype list (config model.enc / model.dec)
    op: str  # "SA", "GA" or "RSA"
    map: np.ndarray


@dataclass
class ImageFeatures:
    """One image as the model sees it: region_feats [n, 2048], boxes [n, 4] (x1, y1, x2, y2 in
    pixels of an image_w x image_h image). All-zero rows of region_feats are padding."""
    region_feats: np.ndarray
    boxes: np.ndarray
    image_w: int
    image_h: int
    path: Optional[str] = None  # the .npz it was read from, if any


@dataclass
class Answer:
    """The model's answer to one question about one image, with its attention."""
    question: str
    answers: List[str]  # top-k, best first
    scores: List[float]  # sigmoid of the logits (trained with BCE) or their softmax (ce/kld), same order
    tokens: List[Token]  # every word of the question; token i is read at position i if used
    # AttFlat weights; masked positions get < 1e-20 (masked with -1e9 before Paddle's softmax)
    lang_attention: np.ndarray  # [max_token] over word positions, sums to 1 over the question's words
    image_attention: np.ndarray  # [n] over the regions, sums to 1 over the real (non-zero) rows
    image: ImageFeatures
    blocks: List[BlockMap] = field(default_factory=list)
    score_kind: str = "sigmoid"  # what `scores` are: "sigmoid" (independent 0..1), "softmax", "match" (a pair's)

    @property
    def region_is_padding(self) -> np.ndarray:
        """bool [n]: rows of all-zero features, which the model masks."""
        return np.abs(self.image.region_feats).sum(axis=1) == 0

    def top_regions(self, k: int = 3) -> List[int]:
        """Indices of the k regions with the most image attention, strongest first."""
        return [int(i) for i in np.argsort(-self.image_attention, kind="stable")[:k]]

    def unread_words(self) -> Tuple[List[str], List[str]]:
        """(words not in the vocabulary, read as UNK; words past the last position, not read)."""
        return ([t.word for t in self.tokens if not t.known], [t.word for t in self.tokens if not t.used])

    def word_weights(self) -> List[float]:
        """The language attention of each word of `tokens` (0 for words past the max_token-th)."""
        return [float(self.lang_attention[i]) if t.used else 0.0 for i, t in enumerate(self.tokens)]

    def to_json(self) -> dict:
        """Plain data for --OUT (the per-block maps are left out: ask the Python API for them)."""
        return {
            "question": self.question,
            "answers": [{"answer": a, "score": round(s, 6)} for a, s in zip(self.answers, self.scores)],
            "tokens": [{"word": t.word, "known": t.known, "used": t.used, "weight": round(w, 6)}
                       for t, w in zip(self.tokens, self.word_weights())],
            "image": {"feature_file": self.image.path, "width": self.image.image_w, "height": self.image.image_h},
            "regions": [{"box": [round(float(v), 2) for v in box], "weight": round(float(w), 6)}
                        for box, w in zip(self.image.boxes, self.image_attention)],
            "top_regions": self.top_regions(5),
        }


# ---- inputs -------------------------------------------------------------------------------

def read_image_features(path: str, feat_size: int = FEAT_DIM) -> ImageFeatures:
    """One feature file in a real layout: VQA-v2's (x [feat_size, n], bbox [n, 4], image_w, image_h)
    or GQA's (x [n, feat_size], bbox, width, height), feat_size being model.feat_size; DataError
    naming the file otherwise. Without the image size the canvas is the boxes' extent."""
    if not os.path.isfile(path):
        raise DataError(f"feature file {path} does not exist; check --FEATS.")
    try:
        region_feats, boxes = load_npz(path, feat_size=feat_size)  # validates the layout
        size_keys = ("image_w", "image_h")
    except BadFeatureFile as e:
        if e.kind != "bad_shape":
            raise
        # GQA's layout, or the error naming both
        region_feats, boxes = load_npz(path, regions_first=True, feat_size=feat_size)
        size_keys = ("width", "height")
    with np.load(path) as npz:
        size = [int(np.asarray(npz[k]).reshape(-1)[0]) if k in npz.files else None for k in size_keys]
    fallback = (int(np.ceil(boxes[:, 2].max())) + 1, int(np.ceil(boxes[:, 3].max())) + 1)
    image_w, image_h = (s if s is not None else f for s, f in zip(size, fallback))
    if image_w <= 0 or image_h <= 0:
        raise DataError(f"feature file {path}: image_w x image_h is {image_w} x {image_h}; both must be positive.")
    return ImageFeatures(region_feats, boxes, image_w, image_h, path)


def as_image_features(features, feat_size: int = FEAT_DIM) -> ImageFeatures:
    """A .npz path, an ImageFeatures, or a tuple (region_feats [n, feat_size], boxes [n, 4], image_w, image_h)."""
    if isinstance(features, ImageFeatures):
        return features
    if isinstance(features, (str, os.PathLike)):
        return read_image_features(os.fspath(features), feat_size)
    region_feats, boxes, image_w, image_h = features
    region_feats = np.ascontiguousarray(region_feats, dtype=np.float32)
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    n = len(region_feats)
    if region_feats.shape != (n, feat_size) or boxes.shape != (n, 4) or n == 0:
        raise DataError(f"features must be region_feats [n, {feat_size}] (model.feat_size) and boxes [n, 4] with n >= 1, "
                        f"got {list(region_feats.shape)} and {list(boxes.shape)}.")
    return ImageFeatures(region_feats, boxes, int(image_w), int(image_h))


def read_tokens(question: str, vocab: Vocab, max_token: int) -> Tuple[List[Token], np.ndarray]:
    """(tokens, ids int64 [max_token]) with the checks a typed question needs: not empty, and at
    least one known word among those the model reads."""
    words = tokenize(question or "")
    if not words:
        raise PredictError(f"the question {question!r} has no words; type one, e.g. --QUESTION=\"what colour is the dog?\".")
    tokens = [Token(w, w in vocab.token_to_ix, i < max_token) for i, w in enumerate(words)]
    if not any(t.known and t.used for t in tokens):
        raise PredictError(f"none of the words of {question!r} is in the model's vocabulary of "
                           f"{vocab.token_size} tokens; ask with words from its training questions.")
    return tokens, encode_question(question, vocab.token_to_ix, max_token)


# ---- vocabularies ------------------------------------------------------------------------

def vocab_sizes_of_weights(state: dict) -> Tuple[Optional[int], Optional[int]]:
    """(tokens T, answers A) a state dict was trained with: embedding.weight [T, E], proj.weight [F, A]."""
    emb, proj = state.get("embedding.weight"), state.get("proj.weight")
    return (None if emb is None else int(emb.shape[0])), (None if proj is None else int(proj.shape[1]))


def check_vocab_fits(vocab: Vocab, state: dict, weights_path: str, vocab_source: str) -> None:
    tokens, answers = vocab_sizes_of_weights(state)
    if (tokens, answers) != (vocab.token_size, vocab.answer_size):
        raise PredictError(f"the vocabulary from {vocab_source} has {vocab.token_size} tokens and "
                           f"{vocab.answer_size} answers, but {weights_path} was trained with {tokens} tokens "
                           f"and {answers} answers; use the vocab.json written beside that checkpoint (--VOCAB).")


def resolve_vocab(weights_path: str, vocab_path: Optional[str], cfg: RunConfig) -> Tuple[Vocab, str]:
    """(vocab, where it came from): --VOCAB, else the vocab.json beside the weights (both carry the
    max_token the model was trained with), else built from the data files of `cfg` as --RUN=val/test
    build them (how the released .pdparams gets its vocabularies; max_token = model.max_token)."""
    if vocab_path:
        return read_vocab_file(vocab_path), vocab_path
    beside = vocab_beside(weights_path)
    if os.path.isfile(beside):
        return read_vocab_file(beside), beside
    data_root = cfg.data.data_root
    try:
        return dataset_spec(cfg.data.dataset).build_vocab(cfg, False), f"the data files under {data_root}"
    except DataError:
        raise PredictError(f"{weights_path} has no {VOCAB_FILE} beside it and the vocabularies cannot be built "
                           f"from --DATA_ROOT={data_root} (its question/annotation files are missing); pass "
                           f"--VOCAB=<the vocab.json of the training run> or the --DATA_ROOT it was trained on.") from None


def format_score(score: float, kind: str) -> str:
    """A softmax probability in % ("62.3%"), a sigmoid score as a number ("0.83"): only the
    softmax's scores are a distribution over the answers."""
    return f"{100.0 * score:.1f}%" if kind == "softmax" else f"{score:.2f}"


def score_meaning(kind: str) -> str:
    """What the answers' numbers are, to follow "the numbers are "."""
    if kind == "softmax":
        return "probabilities: the softmax of the logits over all answers, summing to 100%."
    if kind == "match":
        return "the match probability of the image and the caption (the sigmoid of the matching logit)."
    return ("scores, not probabilities: one sigmoid per answer, 0 to 1, each answer judged on its own "
            "(they need not sum to 1).")


def answer_probabilities(logits: np.ndarray, softmax: bool) -> np.ndarray:
    """[A] scores of the answers: one sigmoid per answer (BCE training), or the softmax."""
    if softmax:
        e = np.exp(logits - logits.max())
        return e / e.sum()
    return 1.0 / (1.0 + np.exp(-logits))


# ---- the predictor -----------------------------------------------------------------------

class Predictor:
    """Load once, ask many. Wraps a model (a live one works too, e.g. during training) and its
    vocabulary; ask() runs one question in eval mode without gradients and restores the mode."""

    def __init__(self, model, vocab: Vocab, softmax_scores: bool = False):
        # questions are cut at vocab.max_token, the model.max_token the model was trained with
        # (recorded in vocab.json); features must be model.feat_size wide
        self.model, self.vocab, self.max_token = model, vocab, vocab.max_token
        self.feat_size = model.cfg.feat_size
        self.softmax_scores = softmax_scores  # scores: softmax (ce/kld training) instead of sigmoids (bce)
        self.vocab_source = None  # set by from_checkpoint: where the vocabulary came from

    @classmethod
    def from_checkpoint(cls, weights_path: str, config: Union[str, ModelConfig, RunConfig] = "small",
                        vocab_path: Optional[str] = None, data_root: Optional[str] = None,
                        cache_dir: Optional[str] = None) -> "Predictor":
        """config: a --MODEL name or YAML path, a RunConfig (also gives data_root, cache_dir and
        the answer dictionary) or a ModelConfig. Vocabularies: see resolve_vocab."""
        given_run = isinstance(config, RunConfig) or isinstance(config, str)
        run_cfg = load_config(config) if isinstance(config, str) else config
        if isinstance(run_cfg, ModelConfig):
            run_cfg = RunConfig(model=run_cfg)
        data = {k: v for k, v in (("data_root", data_root), ("cache_dir", cache_dir)) if v}
        run_cfg = dataclasses.replace(run_cfg, data=dataclasses.replace(run_cfg.data, **data))
        if not os.path.isfile(weights_path):
            raise PredictError(f"weights file {weights_path} does not exist; check --CKPT_PATH or --CKPT_V/--CKPT_E.")
        state = extract_state_dict(safe_load(weights_path), weights_path)
        vocab, source = resolve_vocab(weights_path, vocab_path, run_cfg)
        check_vocab_fits(vocab, state, weights_path, source)
        model = task_named("answer").build_model(run_cfg.model, vocab)
        load_weights(model, weights_path, state)
        model.eval()
        # a model trained with a softmax loss (GQA's ce, kld) scores its answers by their softmax
        predictor = cls(model, vocab, softmax_scores=given_run and run_cfg.train.loss in ("ce", "kld"))
        predictor.vocab_source = source
        return predictor

    def ask(self, features, question: str, topk: int = 5) -> Answer:
        """features: a .npz path (real layout), ImageFeatures, or (region_feats, boxes, image_w, image_h)."""
        image = as_image_features(features, self.feat_size)
        tokens, ids = read_tokens(question, self.vocab, self.max_token)
        was_training = self.model.training
        self.model.eval()
        try:
            with paddle.no_grad():
                logits, maps = self.model.forward_with_attention(
                    paddle.to_tensor(image.region_feats[None]), None, paddle.to_tensor(image.boxes[None]),
                    paddle.to_tensor(ids[None]))
        finally:
            if was_training:
                self.model.train()
        logits = logits.numpy()[0].astype(np.float64)  # [A]
        top = np.argsort(-logits, kind="stable")[:max(1, topk)]
        return Answer(
            question=question,
            answers=[self.vocab.ix_to_ans[int(i)] for i in top],
            scores=[float(p) for p in answer_probabilities(logits, self.softmax_scores)[top]],
            tokens=tokens,
            lang_attention=maps.lang.numpy()[0].mean(axis=1),  # [T, G] -> [T] (glimpses averaged)
            image_attention=maps.img.numpy()[0].mean(axis=1),  # [N, G] -> [N]
            image=image,
            blocks=[BlockMap(b.part, b.position, b.op, b.map.numpy()[0]) for b in maps.blocks],
            score_kind="softmax" if self.softmax_scores else "sigmoid")


# ---- --RUN=predict -----------------------------------------------------------------------

def default_picture_path(results_dir: str, image: ImageFeatures, question: str) -> str:
    """results/predict/<feature file stem>__<question words>.png"""
    stem = os.path.basename(image.path or "features").split(".")[0]
    words = re.sub(r"[^a-z0-9]+", "_", " ".join(tokenize(question))).strip("_")[:60] or "question"
    return os.path.join(results_dir, "predict", f"{stem}__{words}.png")


def format_answer(answer: Answer) -> str:
    width = max(len(a) for a in answer.answers)
    lines = [f"question: {answer.question}"]
    unknown, cut = answer.unread_words()
    if unknown:
        lines.append(f"  (not in the vocabulary, read as UNK: {', '.join(unknown)})")
    if cut:
        lines.append(f"  (past the {sum(t.used for t in answer.tokens)}th word, not read: {' '.join(cut)})")
    lines += [f"  {rank}. {a:<{width}}  {s:.3f}" for rank, (a, s) in enumerate(zip(answer.answers, answer.scores), 1)]
    return "\n".join(lines)


def run_predict(cfg: RunConfig, weights: str, feats: str, question: str, image_path: Optional[str] = None,
                topk: int = 5, out_json: Optional[str] = None, vocab_path: Optional[str] = None,
                picture_path: Optional[str] = None) -> dict:
    """--RUN=predict: answer, print, draw the attention picture, optionally write JSON."""
    from .attention_picture import PhotoError, find_photo, read_photo, save_attention_picture
    from .evaluate import write_json_atomic

    # the user's files are checked before the (slower) model load
    image = read_image_features(feats, cfg.model.feat_size)
    if image_path is not None and not os.path.isfile(image_path):
        raise PredictError(f"--IMAGE={image_path} does not exist; give the photo the features came from, or leave it out.")
    photo = image_path or find_photo(feats)
    photo_rgb = None
    if photo is not None:
        try:
            photo_rgb = read_photo(photo)
        except OSError as e:
            raise PredictError(f"cannot read the photo {photo} ({e}); give a PNG or JPEG with --IMAGE.") from None
        except PhotoError as e:
            raise PredictError(f"{e} Give a smaller photo with --IMAGE.") from None
        photo_h, photo_w = photo_rgb.shape[:2]
        if abs(photo_w / photo_h - image.image_w / image.image_h) > 0.02 * image.image_w / image.image_h:
            print(f"note: the photo {photo} is {photo_w}x{photo_h} but the features describe a "
                  f"{image.image_w}x{image.image_h} image; the picture stretches the photo to the features' size.")
    predictor = Predictor.from_checkpoint(weights, cfg, vocab_path=vocab_path)
    answer = predictor.ask(image, question, topk)
    picture_path = picture_path or default_picture_path(cfg.results_dir, image, question)
    picture = save_attention_picture(answer, picture_path, photo_rgb, flag="--PICTURE")
    print(format_answer(answer))
    print(f"picture: {picture_path} ({'on ' + photo if photo else 'on a blank canvas'}, "
          f"{picture['width']}x{picture['height']} px)")
    result = {**answer.to_json(), "weights": weights, "vocabulary": predictor.vocab_source,
              "photo": photo, "picture": picture}
    if out_json:
        write_json_atomic(result, out_json, "--OUT")
        print(f"wrote {out_json}")
    return result
