"""The GQA metric against values computed by hand on a small question set."""
import pytest

from mmnas.metrics.gqa_accuracy import evaluate, steps_count


def q(answer, structural, semantic, text, detailed="x", group=None, balanced=True, entailed=(), semantic_ops=()):
    return {"imageId": "1", "question": text, "answer": answer, "isBalanced": balanced,
            "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            "groups": {"global": group, "local": "l"}, "entailed": list(entailed),
            "semantic": [{"operation": o, "argument": a, "dependencies": []} for o, a in semantic_ops]}


QUESTIONS = {
    # binary (verify / logical / compare / choose) and open (query) questions
    "1": q("yes", "verify", "attr", "Is the sky dark?", entailed=["2", "1"],
           semantic_ops=[("select", "sky (1)"), ("verify color", "dark")]),
    "2": q("no", "verify", "attr", "Is the sky blue?", semantic_ops=[("select", "sky (1)"), ("verify color", "blue")]),
    "3": q("red", "query", "attr", "What color is the car?", detailed="queryAttr", group="color",
           semantic_ops=[("select", "car (2)"), ("query", "color")]),
    "4": q("blue", "query", "attr", "What color is the bag?", group="color",
           semantic_ops=[("select", "bag (3)"), ("query", "color")]),
    "5": q("cat", "query", "obj", "What animal is it?", group="animal",
           semantic_ops=[("select", "animal (4)"), ("query", "name")]),
    "6": q("color", "compare", "attr", "What do the cars have in common?", detailed="twoCommon",
           semantic_ops=[("select", "car (2)"), ("select", "car (5)"), ("common", "")]),
    "7": q("no", "logical", "obj", "Are there both cats and dogs?",
           semantic_ops=[("select", "cat (4)"), ("exist", "?"), ("select", "dog"), ("exist", "?"), ("and", "")]),
    "8": q("yes", "verify", "rel", "Is it unbalanced?", balanced=False),  # never counted
}
PREDICTIONS = {"1": "yes", "2": "no", "3": "red", "4": "red", "5": "dog", "6": "material", "7": "yes", "8": "no"}
CHOICES = {
    "1": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "2": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "3": {"valid": ["red", "blue"], "plausible": ["red"]},
    "4": {"valid": ["red", "blue", "green"], "plausible": ["blue"]},
    "5": {"valid": ["cat", "dog"], "plausible": ["cat", "dog"]},
    "6": {"valid": ["color"], "plausible": ["color"]},  # "Common": any of color/material/shape counts
    "7": {"valid": ["yes", "no"], "plausible": ["no"]},
}


@pytest.fixture(scope="module")
def scores():
    return evaluate(QUESTIONS, PREDICTIONS, choices=CHOICES, consistency=True)


def test_accuracy_binary_and_open(scores):
    # correct: 1, 2, 3 of the 7 balanced questions; binary = 1, 2, 6, 7 (2 of 4); open = 3, 4, 5 (1 of 3)
    assert scores["n_questions"] == 7
    assert scores["overall"] == round(100 * 3 / 7, 2) == 42.86
    assert scores["per_answer_type"] == {"binary": 50.0, "open": round(100 / 3, 2)}


def test_per_type_length_and_steps(scores):
    assert scores["per_structural_type"] == {"compare": 0.0, "logical": 0.0, "query": 33.33, "verify": 100.0}
    assert scores["per_semantic_type"] == {"attr": 60.0, "obj": 0.0}  # attr: 1, 2, 3 of 1, 2, 3, 4, 6
    # words: q1, q2, q5 have 4 (1, 2 right), q3, q4 have 5 (3 right), q7 6, q6 7
    assert scores["per_length"] == {4: 66.67, 5: 50.0, 6: 0.0, 7: 0.0}
    # steps: "query: name" (q5) and "exist" (q7, twice) are not counted
    assert [steps_count(QUESTIONS[k]) for k in "1234567"] == [2, 2, 2, 2, 1, 3, 3]
    assert scores["per_steps"] == {1: 0.0, 2: 75.0, 3: 0.0}


def test_validity_plausibility_consistency(scores):
    # valid: 1, 2, 3, 4, 5, 6 ("material" counts for a Common question), 7 -> 7 of 7
    assert scores["validity"] == 100.0
    # plausible: 1, 2, 3, 5, 6 (not 4: red is not plausible there; not 7) -> 5 of 7
    assert scores["plausibility"] == round(100 * 5 / 7, 2)
    # only q1 is correct with entailed questions other than itself: q2 answered right -> 100
    assert scores["consistency"] == 100.0


def test_distribution(scores):
    # group color: gold {red: 1, blue: 1}, predicted {red: 2}: (2-1)^2/1 + (0-1)^2/1 = 2, weight 2
    # group animal: gold {cat: 1}, predicted {dog: 1}: (0-1)^2/1 = 1, weight 1
    assert scores["distribution"] == round((2 * 2 + 1 * 1) / 3 / 100, 4)


def test_result_file_form_and_missing_predictions():
    listed = [{"questionId": k, "prediction": v} for k, v in PREDICTIONS.items()]
    assert evaluate(QUESTIONS, listed)["overall"] == 42.86
    with pytest.raises(ValueError, match="1 of 7 balanced questions have no prediction"):
        evaluate(QUESTIONS, {k: v for k, v in PREDICTIONS.items() if k != "4"})
    # the unbalanced question needs no prediction, and no choices either
    assert "validity" not in evaluate(QUESTIONS, {k: v for k, v in PREDICTIONS.items() if k != "8"})
