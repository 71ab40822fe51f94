"""300-d pretrained word vectors for the question vocabulary (initialises the word embedding).

The original used spaCy's `en_vectors_web_lg` (GloVe common crawl); without spaCy the same
vectors come from the GloVe text file. Rows follow token ids; PAD, UNK, CLS and words without a
vector get zeros. Only the initialisation depends on this: loading released weights does not.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Dict, Optional

import numpy as np

from mmnas.config import WORD_VECTOR_SOURCES
from mmnas.data.features import DataError
from mmnas.data.vocab import CLS, PAD, UNK

WORD_DIM = 300
GLOVE_NAME = "glove.840B.300d"
GLOVE_URL = "https://nlp.stanford.edu/data/glove.840B.300d.zip"
_SPECIAL = (PAD, UNK, CLS)


def default_glove_paths(data_root: str):
    base = os.path.join(data_root, "glove", GLOVE_NAME)
    return [base + ".txt", base + ".zip"]


def _glove_fix(data_root: str) -> str:
    return (f"download {GLOVE_URL} (2 GB) and put it (zipped or unzipped) at "
            f"{os.path.join(data_root, 'glove', GLOVE_NAME + '.zip')}, or set data.glove_path")


def load_word_vectors(token_to_ix: Dict[str, int], source: str = "auto", spacy_model: str = "en_vectors_web_lg",
                      glove_path: Optional[str] = None, data_root: str = "./data") -> Optional[np.ndarray]:
    """float32 [T, 300] vectors by token id, or None (source 'none', or 'auto' with nothing found).

    'auto' tries spaCy (installed model only, never downloaded), then the GloVe file.
    """
    if source not in WORD_VECTOR_SOURCES:
        raise ValueError(f"word vector source must be one of {', '.join(WORD_VECTOR_SOURCES)}, got {source!r}")
    if source == "none":
        return None
    if source in ("auto", "spacy"):
        vectors = _from_spacy(token_to_ix, spacy_model, required=source == "spacy")
        if vectors is not None:
            return vectors
    if glove_path is not None:
        candidates = [glove_path]
        if not os.path.isfile(glove_path):  # an explicit path that is wrong is a mistake, not "no vectors"
            raise DataError(f"GloVe file {glove_path} (data.glove_path) does not exist; {_glove_fix(data_root)}.")
    else:
        candidates = [p for p in default_glove_paths(data_root) if os.path.isfile(p)]
    if candidates:
        return read_glove(candidates[0], token_to_ix)
    if source == "glove":
        raise DataError(f"no GloVe file at {' or '.join(default_glove_paths(data_root))}; {_glove_fix(data_root)}.")
    warnings.warn(f"no pretrained word vectors (no spaCy model {spacy_model!r}, no GloVe file): the word "
                  f"embedding starts random. To use GloVe, {_glove_fix(data_root)}.", stacklevel=2)
    return None


def _from_spacy(token_to_ix: Dict[str, int], model: str, required: bool) -> Optional[np.ndarray]:
    fix = f"install spaCy and the model (pip install spacy, then the {model!r} package), or use GloVe"
    try:
        import spacy
    except ImportError:
        if required:
            raise DataError(f"word vectors from spaCy requested but spaCy is not installed; {fix}.") from None
        return None
    try:
        nlp = spacy.load(model)  # only an installed model: spacy.load never downloads
    except (OSError, ImportError, ValueError) as e:
        if required:
            raise DataError(f"spaCy model {model!r} cannot be loaded ({e}); {fix}.") from None
        return None
    if nlp.vocab.vectors.shape[1] != WORD_DIM:
        if required:
            raise DataError(f"spaCy model {model!r} has {nlp.vocab.vectors.shape[1]}-d vectors, "
                            f"need {WORD_DIM}; {fix}.")
        return None
    vectors = np.zeros((len(token_to_ix), WORD_DIM), dtype=np.float32)
    for word, ix in token_to_ix.items():
        if word in _SPECIAL:
            continue
        lexeme = nlp.vocab[word]
        if lexeme.has_vector:
            vectors[ix] = lexeme.vector
    return vectors


def _open_glove_text(path: str):
    """Binary line stream of the GloVe text, directly or from inside a .zip (streamed, not extracted)."""
    if zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        names = [n for n in zf.namelist() if n.endswith(".txt")]
        if not names:
            zf.close()
            raise DataError(f"GloVe zip {path} holds no .txt file; expected {GLOVE_NAME}.txt inside.")
        return zf, zf.open(names[0])
    return None, open(path, "rb")


def read_glove(path: str, token_to_ix: Dict[str, int], dim: int = WORD_DIM) -> np.ndarray:
    """Stream a GloVe text file ("word v1 ... v300" per line), keeping only vocabulary words."""
    vectors = np.zeros((len(token_to_ix), dim), dtype=np.float32)
    wanted = {word.encode("utf-8"): ix for word, ix in token_to_ix.items() if word not in _SPECIAL}
    found = set()
    zf, stream = _open_glove_text(path)
    try:
        for line_no, line in enumerate(stream, start=1):
            # cheap test on the first field; the real word may contain spaces, so split from the right
            if line[:line.find(b" ")] not in wanted:
                continue
            fields = line.rstrip().rsplit(b" ", dim)
            if len(fields) != dim + 1:
                raise DataError(f"GloVe file {path}, line {line_no}: {len(fields) - 1} numbers, expected {dim} "
                                f"(is it the 300-d {GLOVE_NAME} file?).")
            ix = wanted.get(fields[0])
            if ix is None or ix in found:  # first occurrence wins
                continue
            try:
                vectors[ix] = np.array(fields[1:], dtype=np.float32)
            except ValueError:
                raise DataError(f"GloVe file {path}, line {line_no}: not all values are numbers.") from None
            found.add(ix)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"GloVe file {path} cannot be read ({e}); download it again.") from None
    finally:
        stream.close()
        if zf:
            zf.close()
    return vectors
