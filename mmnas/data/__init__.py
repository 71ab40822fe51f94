"""VQA-v2 data: vocabularies, feature files, the paddle Dataset and word vectors.

`VQADataset` and `collate_batch` import paddle (~2 s), so they are loaded on first use:
tools that only check files (`mmnas.data.features`) stay fast.
"""
from mmnas.data.features import (DataError, check_raw_files, feature_index, load_npz,
                                  read_box_count)
from mmnas.data.vocab import (VOCAB_FILE, Vocab, answer_scores, build_answer_vocab, build_token_vocab,
                               build_vocab, encode_question, read_vocab_file, tokenize)
from mmnas.data.word_vectors import load_word_vectors

_LAZY = {"VQADataset", "collate_batch", "split_parts", "TRAIN_SPLITS", "EVAL_SPLITS"}


def __getattr__(name):
    if name in _LAZY:
        from mmnas.data import dataset
        return getattr(dataset, name)
    raise AttributeError(f"module 'mmnas.data' has no attribute {name!r}")


__all__ = ["DataError", "check_raw_files", "feature_index", "load_npz", "read_box_count",
           "VOCAB_FILE", "Vocab", "answer_scores", "build_answer_vocab", "build_token_vocab", "build_vocab",
           "encode_question", "read_vocab_file", "tokenize", "load_word_vectors", *sorted(_LAZY)]
