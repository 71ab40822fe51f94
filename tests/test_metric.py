"""The official VQA metric: golden cases from the reference evaluation plus hand-checked examples."""
import json
import os

import pytest

from mmnas.metrics import evaluate, prep_ans, process_digit_article, process_punctuation

from conftest import GOLDEN_DIR


def make_annotation(question_id, question_type, answer_type, answers):
    """An annotation in the VQA-v2 schema, answer ids included as in the real files."""
    return {
        "question_id": question_id,
        "image_id": 0,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


# ----------------------------------------------------------------------------- golden cases

@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(GOLDEN_DIR, "vqa_metric_cases.json"), "r", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def golden_result(golden):
    annotations = [make_annotation(i, "golden", case["answer_type"], case["answers"])
                   for i, case in enumerate(golden["cases"])]
    predictions = {i: case["prediction"] for i, case in enumerate(golden["cases"])}
    return evaluate(annotations, predictions)


def test_golden_per_question_accuracy(golden, golden_result):
    assert golden_result["n_questions"] == len(golden["cases"]) == 600
    wrong = []
    for i, case in enumerate(golden["cases"]):
        ours = round(golden_result["per_question"][i], 6)  # the golden file keeps 6 decimals
        if abs(ours - case["accuracy"]) > 1e-9:
            wrong.append((i, case, ours))
    assert not wrong, f"{len(wrong)} golden cases differ, first: {wrong[:3]}"


def test_golden_overall_and_answer_types(golden, golden_result):
    assert golden_result["overall"] == golden["overall"]
    assert golden_result["per_answer_type"] == golden["per_answer_type"]
    assert golden_result["per_question_type"] == {"golden": golden["overall"]}


def test_golden_prep_ans(golden):
    wrong = {raw: (prep_ans(raw), expected) for raw, expected in golden["prep_ans"].items()
             if prep_ans(raw) != expected}
    assert not wrong, f"prep_ans differs (ours, expected): {wrong}"


# ----------------------------------------------------------------------------- normalisation quirks

def test_punctuation_rule_quirks():
    assert process_punctuation("tennis-racket") == "tennis racket"  # no space next to '-': becomes a space
    assert process_punctuation("red, white") == "red white"  # ", " occurs: comma deleted
    assert process_punctuation("1,000") == "1000"  # digit-comma-digit: every mark deleted
    assert process_punctuation("yes .") == "yes "  # period removed, the space before it stays
    assert process_punctuation("3.5") == "3.5"  # a period before a digit survives
    assert process_punctuation("." * 40 + "a") == "." * 8 + "a"  # only 32 periods removed
    assert process_digit_article("The Two dogs") == "2 dogs"
    assert process_digit_article("dont know") == "don't know"


# ----------------------------------------------------------------------------- hand-made example
#
# Accuracy of one question = mean over the 10 annotators of min(1, m_i / 3), where m_i is
# how many of the *other* 9 annotators gave the (normalised) predicted answer. If k of the
# 10 answers match: the k matching annotators see k-1 matches, the other 10-k see k, so
#   k=1 -> (1*0 + 9*(1/3)) / 10 = 0.3        k=2 -> (2*(1/3) + 8*(2/3)) / 10 = 18/30 = 0.6
#   k=3 -> (3*(2/3) + 7*1) / 10 = 0.9        k>=4 -> 1.0
#
#  qid  question type     answer type  ground truth (10)                      prediction       score
#  1    how many          number       "2" x10                                "two" -> "2"     k=10 -> 100
#  2    what animal is    other        "dog" x10                              "a dog" -> "dog" k=10 -> 100
#  3    what animal is    other        "a dog" x10 (identical: kept as is)    "a dog" -> "dog" k=0  ->   0
#  4    is this           yes/no       "yes." x2, "yes ." x2, "no" x6         "yes ." -> "yes" k=2  ->  60
#       (answers differ, so the punctuation rule runs on them: "yes." -> "yes" but
#        "yes ." -> "yes " with its trailing space, which never equals "yes")
#  5    how many          number       "1,000" x1, "10" x9                    "1000"           k=1  ->  30
#       (answers differ: "1,000" has digit-comma-digit, so its comma is deleted -> "1000")
#  6    what is the       other        "tennis-racket" x3, "racket" x7        "tennis racket"  k=3  ->  90
#       (answers differ: "tennis-racket" -> "tennis racket")
#  7    what is the       other        "tennis-racket" x10 (identical)        "tennis racket"  k=0  ->   0
#  8    is the            yes/no       "no" x10                               "\tno\n" -> "no" k=10 -> 100
#
# per answer type:   number (100 + 30) / 2 = 65.0     other (100 + 0 + 90 + 0) / 4 = 47.5
#                    yes/no (60 + 100) / 2 = 80.0
# per question type: how many 65.0, what animal is 50.0, what is the 45.0, is this 60.0, is the 100.0
# overall: (1 + 1 + 0 + 0.6 + 0.3 + 0.9 + 0 + 1) / 8 = 4.8 / 8 = 0.6 -> 60.0

HAND_ANNOTATIONS = [
    make_annotation(1, "how many", "number", ["2"] * 10),
    make_annotation(2, "what animal is", "other", ["dog"] * 10),
    make_annotation(3, "what animal is", "other", ["a dog"] * 10),
    make_annotation(4, "is this", "yes/no", ["yes."] * 2 + ["yes ."] * 2 + ["no"] * 6),
    make_annotation(5, "how many", "number", ["1,000"] + ["10"] * 9),
    make_annotation(6, "what is the", "other", ["tennis-racket"] * 3 + ["racket"] * 7),
    make_annotation(7, "what is the", "other", ["tennis-racket"] * 10),
    make_annotation(8, "is the", "yes/no", ["no"] * 10),
]
HAND_PREDICTIONS = {1: "two", 2: "a dog", 3: "a dog", 4: "yes .", 5: "1000",
                    6: "tennis racket", 7: "tennis racket", 8: "\tno\n"}
HAND_PER_QUESTION = {1: 100.0, 2: 100.0, 3: 0.0, 4: 60.0, 5: 30.0, 6: 90.0, 7: 0.0, 8: 100.0}


def test_hand_made_example():
    result = evaluate(HAND_ANNOTATIONS, HAND_PREDICTIONS)
    assert result["n_questions"] == 8
    assert result["per_question"].keys() == HAND_PER_QUESTION.keys()
    for qid, expected in HAND_PER_QUESTION.items():
        assert result["per_question"][qid] == pytest.approx(expected, abs=1e-9), qid
    assert result["overall"] == 60.0
    assert result["per_answer_type"] == {"number": 65.0, "other": 47.5, "yes/no": 80.0}
    assert result["per_question_type"] == {"how many": 65.0, "what animal is": 50.0, "what is the": 45.0,
                                           "is this": 60.0, "is the": 100.0}


def test_result_file_list_gives_same_scores():
    as_list = [{"question_id": qid, "answer": answer} for qid, answer in HAND_PREDICTIONS.items()]
    assert evaluate(HAND_ANNOTATIONS, as_list) == evaluate(HAND_ANNOTATIONS, HAND_PREDICTIONS)


def test_missing_prediction_raises():
    partial = {qid: answer for qid, answer in HAND_PREDICTIONS.items() if qid not in (3, 7)}
    with pytest.raises(ValueError, match=r"2 of 8 .*\[3, 7\]"):
        evaluate(HAND_ANNOTATIONS, partial)
