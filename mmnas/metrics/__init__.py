"""Official VQA answer normalisation and accuracy."""
from .normalize import prep_ans, process_digit_article, process_punctuation
from .vqa_accuracy import evaluate

__all__ = ["evaluate", "prep_ans", "process_punctuation", "process_digit_article"]
