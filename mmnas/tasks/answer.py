"""The answer task (VQA-v2, GQA): MMNasNet's AttFlat + proj head classifies into the answer
dictionary; the loss is train.loss (bce / kld / ce) against the dataset's answer scores; the
metric is the dataset's own (VQA accuracy, GQA accuracy)."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..data.datasets import dataset_spec
from ..models import MMNasNet
from ..models.flops import answer_head_flops
from ..models.loss import answer_loss
from ..models.supernet import SuperNet
from .base import Task


class AnswerTask(Task):
    name = "answer"
    targets = ("answer_scores",)
    watches_attention = True
    sample_noun = "questions"
    result_noun = "answers"
    pred_noun = "logits"

    def vocab_text(self, vocab) -> str:
        return f"T={vocab.token_size} A={vocab.answer_size}"

    def build_model(self, cfg, vocab, word_vectors=None):
        return MMNasNet(cfg, vocab.token_size, vocab.answer_size, word_vectors)

    def build_supernet(self, cfg, search, vocab, word_vectors=None):
        return SuperNet(cfg, search, vocab.token_size, vocab.answer_size, word_vectors)

    def loss(self, outputs, batch, run_cfg) -> Dict[str, object]:
        return {"loss": answer_loss(outputs.astype("float32"), batch["answer_scores"], run_cfg.train.loss)}

    def predict_outputs(self, outputs, batch) -> Dict[str, np.ndarray]:
        return {"logits": outputs}

    def result_entries(self, dataset, outputs):
        ix_to_ans = dataset.vocab.ix_to_ans
        answers = [ix_to_ans[int(ix)] for ix in outputs["logits"].argmax(axis=1)]
        return dataset.result_entries(answers)  # the dataset's result-file format

    def scalars(self, scores: dict) -> Dict[str, float]:
        return {"overall": scores["overall"], **scores.get("per_answer_type", {})}

    def search_score(self, outputs, batch) -> float:
        """The training target of the argmax answer: a quick VQA-accuracy proxy."""
        top = outputs.argmax(axis=1).numpy()
        return float(batch["answer_scores"].numpy()[np.arange(len(top)), top].sum())

    def head_flops(self, cfg, dataset_name: str, n: int, tokens: int) -> float:
        """AttFlat x 2 and proj over the published answer dictionary of the dataset (the
        budget is about the model trained on the real data, whatever the vocabulary at hand)."""
        return answer_head_flops(cfg, n, tokens, dataset_spec(dataset_name).answers)
