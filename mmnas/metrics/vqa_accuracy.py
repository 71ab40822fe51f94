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


def evaluate(annotations, predictions):
    """Score predictions against VQA-v2 annotations with the official metric.

    annotations: list of dicts with question_id, question_type, answer_type and
        answers (10 x {"answer": ...}).
    predictions: {question_id: answer} or [{"question_id", "answer"}, ...]; extra
        question ids are ignored, missing ones raise ValueError.
    Returns overall / per_answer_type / per_question_type percentages (2 places),
    per_question {question_id: unrounded percent} and n_questions.
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
    for ann in annotations:
        qid = int(ann["question_id"])
        fraction = question_accuracy([a["answer"] for a in ann["answers"]], predicted[qid])
        all_fractions.append(fraction)
        by_answer_type[ann["answer_type"]].append(fraction)
        by_question_type[ann["question_type"]].append(fraction)
        per_question[qid] = 100 * fraction

    return {
        "overall": _percent(all_fractions),
        "per_answer_type": {t: _percent(f) for t, f in by_answer_type.items()},
        "per_question_type": {t: _percent(f) for t, f in by_question_type.items()},
        "per_question": per_question,
        "n_questions": len(all_fractions),
    }
