"""Official VQA-v2 accuracy, reproducing the reference evaluation number for number.

Per question, the reference:
- cleans every answer: '\\n' and '\\t' become spaces, then strip;
- always normalises the prediction with the punctuation rule and then the
  digit/article/contraction rule;
- applies only the punctuation rule to the ground-truth answers, and only when
  the 10 answers are not all identical (so an all-identical "on the table" can
  never be matched: the prediction loses its article, the answers keep theirs);
- scores mean over the 10 annotators of min(1, matches among the other 9 / 3).
Overall and per-type scores are means of the per-question fractions, times 100,
rounded to 2 places.
"""
import warnings
from collections import defaultdict

from .normalize import process_digit_article, process_punctuation


def _clean_whitespace(text):
    return text.replace("\n", " ").replace("\t", " ").strip()


def _predictions_by_question(predictions):
    """Accept {question_id: answer} or a result-file list of {"question_id", "answer"}."""
    if isinstance(predictions, dict):
        return {int(qid): answer for qid, answer in predictions.items()}
    return {int(item["question_id"]): item["answer"] for item in predictions}


def question_accuracy(gt_answers, predicted_answer):
    """Fraction in [0, 1] for one question; answers are raw strings as annotated."""
    gt_answers = [_clean_whitespace(answer) for answer in gt_answers]
    prediction = process_digit_article(process_punctuation(_clean_whitespace(predicted_answer)))
    if len(set(gt_answers)) > 1:
        gt_answers = [process_punctuation(answer) for answer in gt_answers]
    n_matching = sum(answer == prediction for answer in gt_answers)
    # each annotator is compared against the other 9; summed in order, like the reference
    per_annotator = [min(1, (n_matching - (answer == prediction)) / 3) for answer in gt_answers]
    return sum(per_annotator) / len(per_annotator)


def _percent(fractions):
    return round(100 * sum(fractions) / len(fractions), 2)


def _usable_answers(ann):
    """The annotation's human answer strings, or None when there is nothing to score against
    (no answers, an empty list, or entries without a text answer)."""
    answers = ann.get("answers")
    if not isinstance(answers, list) or not answers:
        return None
    texts = [a.get("answer") if isinstance(a, dict) else None for a in answers]
    return texts if all(isinstance(t, str) for t in texts) else None


UNKNOWN_TYPE = "unknown"  # per-type bucket of annotations without answer_type / question_type


def _has_type(ann, key):
    return isinstance(ann.get(key), str) and bool(ann[key])


def _type_of(ann, key):
    return ann[key] if _has_type(ann, key) else UNKNOWN_TYPE


def evaluate(annotations, predictions):
    """Score predictions against VQA-v2 annotations with the official metric.

    annotations: list of dicts with question_id, question_type, answer_type and
        answers (10 x {"answer": ...}).
    predictions: {question_id: answer} or [{"question_id", "answer"}, ...]; extra
        question ids are ignored, missing ones raise ValueError.
    Annotations without usable answers (missing or empty list, entries without a text answer)
    are left out of every score, with one warning counting them (`n_skipped`); a missing
    answer_type / question_type is scored under "unknown", also counted in one warning.
    Returns overall / per_answer_type / per_question_type percentages (2 places),
    per_question {question_id: unrounded percent}, n_questions (scored) and n_skipped.
    """
    predicted = _predictions_by_question(predictions)
    missing = [ann["question_id"] for ann in annotations if int(ann["question_id"]) not in predicted]
    if missing:
        raise ValueError(f"{len(missing)} of {len(annotations)} annotated questions have no prediction, "
                         f"e.g. question ids {missing[:5]}")
    if not annotations:
        raise ValueError("no annotations to evaluate")

    all_fractions = []
    by_answer_type = defaultdict(list)
    by_question_type = defaultdict(list)
    per_question = {}
    skipped, untyped = [], []
    for ann in annotations:
        qid = int(ann["question_id"])
        gt_answers = _usable_answers(ann)
        if gt_answers is None:
            skipped.append(qid)
            continue
        if not (_has_type(ann, "answer_type") and _has_type(ann, "question_type")):
            untyped.append(qid)
        fraction = question_accuracy(gt_answers, predicted[qid])
        all_fractions.append(fraction)
        by_answer_type[_type_of(ann, "answer_type")].append(fraction)
        by_question_type[_type_of(ann, "question_type")].append(fraction)
        per_question[qid] = 100 * fraction
    if not all_fractions:
        raise ValueError(f"none of the {len(annotations)} annotations has answers to score against "
                         f"(every 'answers' list is missing, empty or without text answers)")
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(annotations)} annotations have no usable answers (missing or "
                      f"empty 'answers', or entries without a text answer) and were left out of the scores; "
                      f"first question ids {skipped[:5]}", stacklevel=2)
    if untyped:
        warnings.warn(f"{len(untyped)} annotations lack answer_type or question_type and are scored under "
                      f"{UNKNOWN_TYPE!r}; first question ids {untyped[:5]}", stacklevel=2)

    return {
        "overall": _percent(all_fractions),
        "per_answer_type": {t: _percent(f) for t, f in by_answer_type.items()},
        "per_question_type": {t: _percent(f) for t, f in by_question_type.items()},
        "per_question": per_question,
        "n_questions": len(all_fractions),
        "n_skipped": len(skipped),
    }
