"""--RUN=predict on a matching model (data.dataset flickr30k): retrieval with one query.

    python run.py --RUN=predict --MODEL=itm_tiny --CKPT_V=itm --CKPT_E=6 \
        --FEATS=data/itm/flickr_bua-r101-fix36 --QUESTION="a red cup and a blue dog"   # images for a caption
    python run.py --RUN=predict --MODEL=itm_tiny --CKPT_V=itm --CKPT_E=6 \
        --FEATS=data/itm/flickr_bua-r101-fix36/1000000.jpg.npz --CAPTIONS=captions.txt  # captions for an image

A folder's .npz files (the real layout, read as --RUN=predict reads one) are scored against the
caption; a text file's captions (one per line) against the image. Every pair gets a full pass
(the head is a cross-attention scorer); the top --TOPK are printed best first with their match
probability sigmoid(logit). The vocabulary comes as for VQA predict (vocab.json beside the
weights, --VOCAB, or the data files).
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from ..checkpoint_files import load_weights
from ..config import RunConfig
from ..data.flickr import collate_pairs
from ..models.matching_head import pair_scorer
from ..progress import progress_bar
from ..tasks import task_of
from .attention_picture import find_photo, save_attention_picture
from .evaluate import write_json_atomic
from .predict import Answer, PredictError, default_picture_path, read_image_features, read_tokens, resolve_vocab

PAIRS_PER_PASS = 64


def _read_captions(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise PredictError(f"--CAPTIONS={path} does not exist; give a text file with one caption per line.")
    with open(path, "r", encoding="utf-8") as f:
        captions = [line.strip() for line in f if line.strip()]
    if not captions:
        raise PredictError(f"--CAPTIONS={path} holds no caption; write one caption per line.")
    return captions


def _feature_files(folder: str) -> List[str]:
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".npz"))
    if not files:
        raise PredictError(f"--FEATS={folder} holds no .npz feature files; give a folder of them (or one file "
                           f"with --CAPTIONS).")
    return files


class Matcher:
    """A matching model loaded once (weights, vocabulary) for many queries: what --RUN=predict
    does for one, and what the web demo's retrieval mode does for each caption."""

    def __init__(self, cfg: RunConfig, weights: str, vocab_path: Optional[str] = None):
        self.vocab, self.vocab_source = resolve_vocab(weights, vocab_path, cfg)
        self.max_token, self.feat_size = cfg.model.max_token, cfg.model.feat_size
        model = task_of(cfg).build_model(cfg.model, self.vocab)
        load_weights(model, weights)
        self.model = model
        self.score = pair_scorer(model)

    def _logits(self, pair_of, n: int, progress: bool) -> np.ndarray:
        """[n] match logits, pair_of(k) giving the k-th (region_feats, boxes, token_ids, image, caption)."""
        logits = np.zeros(n, dtype=np.float64)
        for first in progress_bar(range(0, n, PAIRS_PER_PASS), desc="score pairs",
                                  disable=not progress or n <= PAIRS_PER_PASS):
            block = range(first, min(n, first + PAIRS_PER_PASS))
            logits[first:first + len(block)] = self.score(collate_pairs([pair_of(k) for k in block]))
        return logits

    def image_logits(self, images, caption: str, progress: bool = False) -> np.ndarray:
        """[len(images)] logits of one caption against each ImageFeatures."""
        ids = read_tokens(caption, self.vocab, self.max_token)[1]
        return self._logits(lambda k: (images[k].region_feats, images[k].boxes, ids, k, 0), len(images), progress)

    def caption_logits(self, image, captions: List[str], progress: bool = False) -> np.ndarray:
        """[len(captions)] logits of each caption against one ImageFeatures."""
        ids = [read_tokens(c, self.vocab, self.max_token)[1] for c in captions]
        return self._logits(lambda k: (image.region_feats, image.boxes, ids[k], 0, k), len(captions), progress)


    def pair_attention(self, image, caption: str) -> Answer:
        """One pair with the head's attention, for the attention picture: an Answer whose one
        "answer" is "match" with the pair's match probability (score_kind "match"), lang_attention
        the head's caption AttFlat weights [max_token] and image_attention its region AttFlat
        weights [n] (glimpses averaged; each sums to 1 over the real words / regions)."""
        import paddle
        tokens, ids = read_tokens(caption, self.vocab, self.max_token)
        pools = (self.model.head.attflat_lang, self.model.head.attflat_img)
        for pool in pools:
            pool.attention_record = []  # records only during this call
        self.model.eval()
        try:
            with paddle.no_grad():
                logit = self.model(paddle.to_tensor(image.region_feats[None]), paddle.to_tensor(image.boxes[None]),
                                   paddle.to_tensor(ids[None]))
            lang, img = (pool.attention_record[0].numpy()[0].mean(axis=1) for pool in pools)  # [T|N, G] -> [T|N]
        finally:
            for pool in pools:
                pool.attention_record = None
        return Answer(question=caption, answers=["match"],
                      scores=[float(match_probabilities(logit.numpy().astype(np.float64))[0])],
                      tokens=tokens, lang_attention=lang, image_attention=img, image=image, score_kind="match")


def match_probabilities(logits: np.ndarray) -> np.ndarray:
    """sigmoid(logit): the probability that a pair matches."""
    return 1.0 / (1.0 + np.exp(-logits))


def rank_order(logits: np.ndarray, topk: int) -> np.ndarray:
    """Indices of the top `topk` logits, best first (ties in the given order)."""
    return np.argsort(-logits, kind="stable")[:topk]


def run_match_predict(cfg: RunConfig, weights: str, feats: str, caption: Optional[str] = None,
                      captions_path: Optional[str] = None, topk: int = 5, out_json: Optional[str] = None,
                      vocab_path: Optional[str] = None, progress: bool = True,
                      picture_path: Optional[str] = None) -> dict:
    """Rank the images of the folder `feats` for `caption`, or the captions of `captions_path` for
    the image `feats`; print and return the top `topk` ({"query", "ranked": [{..., "score"}],
    "picture"}); draw the attention picture of the best pair (to `picture_path` or results/predict/)."""
    if (caption is None) == (captions_path is None):
        raise PredictError("a matching model ranks images for --QUESTION=\"<caption>\" (with --FEATS=<folder of "
                           ".npz>) or captions for an image (--FEATS=<file.npz> --CAPTIONS=<text file>); give one.")
    images_for_caption = caption is not None
    if images_for_caption and not os.path.isdir(feats):
        raise PredictError(f"--FEATS={feats} is not a folder: to rank images for --QUESTION, give the folder of "
                           f".npz files; to rank captions for this image, give --CAPTIONS=<text file>.")
    paths = _feature_files(feats) if images_for_caption else [feats]
    images = [read_image_features(p, cfg.model.feat_size) for p in paths]  # the user's files first
    captions = [caption] if images_for_caption else _read_captions(captions_path)
    matcher = Matcher(cfg, weights, vocab_path)
    if images_for_caption:
        logits = matcher.image_logits(images, caption, progress)
    else:
        logits = matcher.caption_logits(images[0], captions, progress)
    n = len(logits)
    order = rank_order(logits, topk)
    probs = match_probabilities(logits)
    if images_for_caption:
        query = {"caption": caption}
        ranked = [{"feats": paths[k], "score": round(float(probs[k]), 6)} for k in order]
    else:
        query = {"feats": feats}
        ranked = [{"caption": captions[k], "score": round(float(probs[k]), 6)} for k in order]
    what = "images" if images_for_caption else "captions"
    print(f"top {len(ranked)} of {n} {what} for {next(iter(query.values()))!r}:")
    for place, entry in enumerate(ranked, 1):
        print(f"  {place}. {entry['score']:.4f}  {entry.get('feats') or entry['caption']}")
    best = int(order[0])
    best_image, best_caption = (images[best], caption) if images_for_caption else (images[0], captions[best])
    best_pair = matcher.pair_attention(best_image, best_caption)
    picture_path = picture_path or default_picture_path(cfg.results_dir, best_image, best_caption)
    photo = find_photo(best_image.path) if best_image.path else None
    save_attention_picture(best_pair, picture_path, photo, flag="--PICTURE")
    print(f"picture of the best pair: {picture_path}")
    result = {"query": query, "ranked": ranked, "candidates": n, "weights": weights, "vocabulary": matcher.vocab_source,
              "picture": picture_path}
    if out_json:
        write_json_atomic(result, out_json)
        print(f"wrote {out_json}")
    return result
