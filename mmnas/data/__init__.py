"""The data: VQA-v2 and GQA files, vocabularies, the paddle Datasets (behind one interface,
datasets.py) and word vectors.

The Dataset classes and `collate_batch` import paddle (~2 s), so they are loaded on first use:
tools that only check files (`mmnas.data.features`) stay fast.
"""
from mmnas.data.features import (DataError, check_raw_files, feature_index, load_npz,
                                  read_box_count)
from mmnas.data.vocab import (VOCAB_FILE, Vocab, answer_scores, build_answer_vocab, build_token_vocab,
                               build_vocab, encode_question, read_vocab_file, tokenize)
from mmnas.data.word_vectors import load_word_vectors

_LAZY = {"VQADataset": "dataset", "split_parts": "dataset", "EVAL_SPLITS": "dataset",
         "collate_batch": "regions", "GQADataset": "gqa"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"mmnas.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mmnas.data' has no attribute {name!r}")


__all__ = ["DataError", "check_raw_files", "feature_index", "load_npz", "read_box_count",
           "VOCAB_FILE", "Vocab", "answer_scores", "build_answer_vocab", "build_token_vocab", "build_vocab",
           "encode_question", "read_vocab_file", "tokenize", "load_word_vectors", *sorted(_LAZY)]
