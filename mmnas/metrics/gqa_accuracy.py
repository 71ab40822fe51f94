"""The official GQA evaluation (Hudson & Manning, 2019), over balanced questions.

For every question whose `isBalanced` is true, a prediction is correct when it equals the gold
`answer` string exactly. Reported, as percentages (x100) unless said otherwise:
- accuracy; binary / open: accuracy over questions whose structural type is / is not `query`
  (open = query);
- per structural type, per semantic type, per number of words (`len(question.split())`) and
  per number of reasoning steps (operations of `semantic`, leaving out those whose
  "operation: argument" contains "exist", "query: name" or "choose name");
- validity / plausibility, with the choices file: the prediction is in the question's
  `valid` / `plausible` list (for detailed types containing "Common" the list is
  ["color", "material", "shape"]);
- consistency, when asked: over correctly answered questions with entailed questions other
  than themselves, the mean correctness of those entailed questions;
- distribution (not x100, lower is better): per global group g, the chi-square of predicted
  against gold answer counts, sum_a (pred_g[a] - gold_g[a])^2 / gold_g[a], averaged over groups
  weighted by their question counts, divided by 100.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Union

_NOT_A_STEP = ("exist", "query: name", "choose name")


def _predictions_by_question(predictions) -> Dict[str, str]:
    """Accept {question_id: answer} or a result file's [{"questionId", "prediction"}]."""
    if isinstance(predictions, Mapping):
        return {str(qid): answer for qid, answer in predictions.items()}
    return {str(item["questionId"]): item["prediction"] for item in predictions}


def words_count(question: dict) -> int:
    return len(question["question"].split())


def steps_count(question: dict) -> int:
    """Reasoning steps: the semantic program's operations, without the final query-like ones."""
    return sum(1 for op in question.get("semantic") or []
               if not any(s in f"{op['operation']}: {op['argument']}" for s in _NOT_A_STEP))


def is_open(question: dict) -> bool:
    return question["types"]["structural"] == "query"


def _belongs(prediction: str, group: List[str], question: dict) -> bool:
    if "Common" in question["types"].get("detailed", ""):
        group = ["color", "material", "shape"]
    return prediction in group


def _mean_percent(values: List[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def _chi_square(gold: Dict[str, Dict[str, int]], predicted: Dict[str, Dict[str, int]]) -> float:
    weighted, total = 0.0, 0
    for group, gold_counts in gold.items():
        score = sum((predicted[group].get(a, 0) - e) ** 2 / e for a, e in gold_counts.items())
        overall = sum(gold_counts.values())
        weighted += score * overall
        total += overall
    return weighted / total if total else 0.0


def evaluate(questions: Mapping[str, dict], predictions: Union[Mapping, List[dict]],
             choices: Optional[Mapping[str, dict]] = None, consistency: bool = False) -> dict:
    """Score predictions against GQA questions ({question id: question} as in the files).

    Every balanced question (and, with consistency, every entailed one) needs a prediction;
    extra predictions are ignored. Returns percentages (2 places) and counts:
    overall (= accuracy), per_answer_type {binary, open}, per_structural_type,
    per_semantic_type, per_length, per_steps, validity/plausibility (with choices),
    consistency (when asked), distribution, per_question {qid: 0 or 100}, n_questions.
    """
    predicted = _predictions_by_question(predictions)
    balanced = [(str(qid), q) for qid, q in questions.items() if q.get("isBalanced", False)]
    if not balanced:
        raise ValueError("no balanced questions to evaluate (isBalanced is false or missing everywhere)")
    missing = [qid for qid, _ in balanced if qid not in predicted]
    if missing:
        raise ValueError(f"{len(missing)} of {len(balanced)} balanced questions have no prediction, "
                         f"e.g. question ids {missing[:5]}")
    if choices is not None:
        no_choices = [qid for qid, _ in balanced if qid not in choices]
        if no_choices:
            raise ValueError(f"the choices file lacks {len(no_choices)} balanced question(s), "
                             f"e.g. {no_choices[:5]}; is it the choices file of this split?")

    correct: List[float] = []
    by_answer_type, by_structural, by_semantic = defaultdict(list), defaultdict(list), defaultdict(list)
    by_length, by_steps = defaultdict(list), defaultdict(list)
    validity, plausibility, consistent = [], [], []
    gold_hist = defaultdict(lambda: defaultdict(int))
    pred_hist = defaultdict(lambda: defaultdict(int))
    per_question = {}
    for qid, q in balanced:
        prediction, gold = predicted[qid], q["answer"]
        score = float(prediction == gold)
        correct.append(score)
        per_question[qid] = 100.0 * score
        by_answer_type["open" if is_open(q) else "binary"].append(score)
        by_structural[q["types"]["structural"]].append(score)
        by_semantic[q["types"]["semantic"]].append(score)
        by_length[words_count(q)].append(score)
        by_steps[steps_count(q)].append(score)
        if choices is not None:
            validity.append(float(_belongs(prediction, choices[qid]["valid"], q)))
            plausibility.append(float(_belongs(prediction, choices[qid]["plausible"], q)))
        group = (q.get("groups") or {}).get("global")
        if group is not None:
            gold_hist[group][gold] += 1
            pred_hist[group][prediction] += 1
        if consistency and score:
            entailed = [e for e in q.get("entailed") or [] if str(e) != qid]
            if entailed:
                absent = [e for e in entailed if str(e) not in predicted or str(e) not in questions]
                if absent:
                    raise ValueError(f"consistency needs predictions for the questions entailed by {qid}, "
                                     f"e.g. {absent[:5]}; evaluate the whole split or switch consistency off")
                consistent.append(sum(float(predicted[str(e)] == questions[str(e)]["answer"])
                                      for e in entailed) / len(entailed))

    def table(groups):
        return {key: round(_mean_percent(v), 2) for key, v in sorted(groups.items())}

    scores = {
        "overall": round(_mean_percent(correct), 2),
        "per_answer_type": table(by_answer_type),
        "per_structural_type": table(by_structural),
        "per_semantic_type": table(by_semantic),
        "per_length": table(by_length),
        "per_steps": table(by_steps),
        "distribution": round(_chi_square(gold_hist, pred_hist) / 100, 4),
        "per_question": per_question,
        "n_questions": len(balanced),
    }
    if choices is not None:
        scores["validity"] = round(_mean_percent(validity), 2)
        scores["plausibility"] = round(_mean_percent(plausibility), 2)
    if consistency:
        scores["consistency"] = round(_mean_percent(consistent), 2)
    return scores


def format_scores(scores: dict) -> str:
    """One line: accuracy, binary/open, validity/plausibility/consistency when present, distribution."""
    parts = [f"accuracy {scores['overall']:.2f}"]
    parts += [f"{k} {v:.2f}" for k, v in sorted(scores["per_answer_type"].items())]
    parts += [f"{k} {scores[k]:.2f}" for k in ("validity", "plausibility", "consistency") if k in scores]
    parts.append(f"distribution {scores['distribution']:.4f}")
    return ", ".join(parts) + f" on {scores['n_questions']} balanced questions"
