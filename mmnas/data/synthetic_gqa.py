"""A small synthetic GQA, written in exactly the layout of the openvqa GQA release.

The world is the synthetic VQA-v2 world (mmnas/data/synthetic.py): the same scenes, region
features and question families, so a model can learn it on a CPU and the relation embedding
matters (size and distance questions need the boxes). What changes is the form of the files:

- questions: one JSON object per split keyed by question id, with a single `answer`,
  `types` (structural, semantic, detailed), `groups`, a `semantic` program, `isBalanced`;
  about 1 question in 10 is unbalanced (only balanced ones are scored);
- splits: train, val and testdev (answered), and submission_all = testdev plus extra
  unanswered questions (what the test server wants answered);
- features: `feats/gqa-frcn/<imageId>.npz` with x [n, 2048] rows (not channels first), bbox,
  width, height; image ids are strings;
- `raw/eval/val_choices.json`: valid answers = every answer of the question's kind (yes/no,
  colours, categories, numbers), plausible = those that occur in the image.
Everything is a pure function of the seed, like the VQA-v2 generator.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Dict, List

import numpy as np

from mmnas.checkpoint_files import write_json_atomic, write_text_atomic
from mmnas.data.gqa_files import CHOICES_FILES, FEATURE_DIR, QUESTION_FILES
from mmnas.data.synthetic import (CATEGORIES, COLOURS, FeatureWorld, Scene, _rng, family_cumulative,
                                  make_questions, sample_scene, save_npz_deterministic)

MARKER_FILE = "README_SYNTHETIC.txt"
UNBALANCED_SHARE = 0.1
NUMBERS = [str(n) for n in range(11)]

# question family -> (structural type, semantic type, detailed type); answers decide the group
GQA_TYPES = {
    "exist": ("verify", "obj", "exist"),
    "attr_check": ("verify", "attr", "verifyAttr"),
    "size_compare": ("compare", "attr", "compareSize"),
    "count_category": ("query", "obj", "countObj"),
    "count_colour": ("query", "attr", "countAttr"),
    "count_all": ("query", "global", "countAll"),
    "colour_of": ("query", "attr", "queryAttr"),
    "category_of_colour": ("query", "cat", "categoryThat"),
    "extreme_size": ("query", "rel", "querySize"),
    "nearest": ("query", "rel", "relNear"),
}


def answer_group(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yesno"
    if answer in COLOURS:
        return "color"
    if answer.isdigit():
        return "number"
    return "category"


_GROUP_ANSWERS = {"yesno": ["yes", "no"], "color": list(COLOURS), "number": NUMBERS, "category": list(CATEGORIES)}


def _program(text: str, family: str, answer: str) -> List[dict]:
    """A short semantic program: selects for every category named, then the final operation."""
    words = text.lower().rstrip("?").split()
    ops = [{"operation": "select", "argument": f"{c} ({i})", "dependencies": []}
           for i, c in enumerate(CATEGORIES) if c in words or c + "s" in words]
    if family in ("extreme_size", "nearest"):
        ops.append({"operation": "relate", "argument": family, "dependencies": [len(ops) - 1] if ops else []})
    final = {"verify": "verify", "compare": "compare", "query": "query"}[GQA_TYPES[family][0]]
    argument = "name" if answer_group(answer) == "category" else answer_group(answer)
    if family == "exist":
        final, argument = "exist", "?"
    ops.append({"operation": final, "argument": argument, "dependencies": [len(ops) - 1] if ops else []})
    return ops


def _gqa_questions(rng: np.random.Generator, scene: Scene, n: int, cumulative, answered: bool) -> Dict[str, dict]:
    out = {}
    for question, annotation, family in make_questions(rng, scene, n, 0, cumulative):
        answer = annotation["multiple_choice_answer"]  # the canonical answer (a majority of the ten)
        structural, semantic, detailed = GQA_TYPES[family]
        entry = {"imageId": str(scene.image_id), "question": question["question"],
                 "isBalanced": bool(rng.random() >= UNBALANCED_SHARE),
                 "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
                 "groups": {"global": answer_group(answer) if structural == "query" else None,
                            "local": f"{family}-{answer_group(answer)}"},
                 "entailed": [], "equivalent": [],
                 "semantic": _program(question["question"], family, answer),
                 "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}}
        entry["semanticStr"] = " ".join(f"{o['operation']}: {o['argument']}" for o in entry["semantic"])
        if answered:
            entry["answer"] = answer
            entry["fullAnswer"] = f"The answer is {answer}."
        out[str(question["question_id"])] = entry
    return out


def _choices(scene: Scene, questions: Dict[str, dict]) -> Dict[str, dict]:
    present = {"color": [COLOURS[c] for c in sorted(set(scene.colours))],
               "category": [CATEGORIES[c] for c in sorted(set(scene.categories))],
               "yesno": ["yes", "no"], "number": NUMBERS[:scene.num_objects + 1]}
    return {qid: {"valid": _GROUP_ANSWERS[answer_group(q["answer"])],
                  "plausible": present[answer_group(q["answer"])]} for qid, q in questions.items()}


def make_synthetic_gqa(out_root: str, n_train_images: int = 1500, n_val_images: int = 300,
                       n_testdev_images: int = 200, n_test_only_images: int = 100, questions_per_image: int = 5,
                       seed: int = 0, min_boxes: int = 10, max_boxes: int = 36, progress: bool = False) -> dict:
    """Write a synthetic GQA under `<out_root>/gqa/` and return a summary dict. Refuses to
    write into a `gqa/` folder that holds files but no synthetic marker."""
    if not 1 <= min_boxes <= max_boxes <= 100:
        raise ValueError(f"need 1 <= min_boxes <= max_boxes <= 100, got {min_boxes}..{max_boxes}")
    start = time.time()
    gqa_root = os.path.join(out_root, "gqa")
    if os.path.isdir(gqa_root) and os.listdir(gqa_root) and not os.path.exists(os.path.join(gqa_root, MARKER_FILE)):
        raise FileExistsError(f"{gqa_root} holds files that are not a synthetic GQA (no {MARKER_FILE}); "
                              f"refusing to write there. Choose another output folder.")
    feat_dir = os.path.join(gqa_root, FEATURE_DIR)
    for folder in (feat_dir, os.path.join(gqa_root, "raw", "questions1.2"), os.path.join(gqa_root, "raw", "eval")):
        os.makedirs(folder, exist_ok=True)
    write_text_atomic("SYNTHETIC DATA - this is not GQA.\nGenerated by mmnas (tools/make_synthetic_gqa.py, "
                      "mmnas/data/synthetic_gqa.py) in the GQA layout of the openvqa release.\n"
                      f"seed {seed}; images train {n_train_images}, val {n_val_images}, testdev {n_testdev_images}, "
                      f"test only {n_test_only_images}; {questions_per_image} questions per image; "
                      f"regions {min_boxes}..{max_boxes}\n", os.path.join(gqa_root, MARKER_FILE))

    world = FeatureWorld(seed)
    cumulative = family_cumulative()
    # synthetic.py's splits: train, val, test; testdev and the test-only images share "test"
    plan = [("train", "train", i) for i in range(n_train_images)] + \
           [("val", "val", i) for i in range(n_val_images)] + \
           [("testdev", "test", i) for i in range(n_testdev_images)] + \
           [("test_only", "test", n_testdev_images + i) for i in range(n_test_only_images)]
    questions: Dict[str, Dict[str, dict]] = {"train": {}, "val": {}, "testdev": {}, "test_only": {}}
    choices: Dict[str, dict] = {}
    box_counts = []
    if progress:
        from mmnas.progress import progress_bar  # lines, not in-place redraws, in a pipe or a log
        plan = progress_bar(plan, desc="synthetic GQA", unit="img")
    for part, world_split, index in plan:
        scene = sample_scene(seed, world_split, index, min_boxes, max_boxes)
        region_feats = world.region_features(seed, scene).T  # [n, 2048]: GQA files keep regions as rows
        save_npz_deterministic(os.path.join(feat_dir, f"{scene.image_id}.npz"), {
            "x": np.ascontiguousarray(region_feats), "bbox": scene.boxes,
            "width": np.int64(scene.width), "height": np.int64(scene.height),
            "objectsNum": np.int64(len(scene.boxes))})
        box_counts.append(len(scene.boxes))
        made = _gqa_questions(_rng(seed, world_split, index, 4), scene, questions_per_image, cumulative,
                              answered=part != "test_only")
        questions[part].update(made)
        if part == "val":
            choices.update(_choices(scene, made))

    def write(path, obj):
        write_json_atomic(obj, path, flag="")

    for part in ("train", "val", "testdev"):
        write(os.path.join(gqa_root, QUESTION_FILES[part]), questions[part])
    submission = {qid: {k: v for k, v in q.items() if k not in ("answer", "fullAnswer")}
                  for part in ("testdev", "test_only") for qid, q in questions[part].items()}
    write(os.path.join(gqa_root, QUESTION_FILES["test"]), submission)
    write(os.path.join(gqa_root, CHOICES_FILES["val"]), choices)

    val_answers = Counter(q["answer"] for q in questions["val"].values() if q["isBalanced"])
    return {"gqa_root": os.path.abspath(gqa_root), "seed": seed,
            "questions": {part: len(q) for part, q in questions.items()},
            "val_majority_answer": val_answers.most_common(1)[0][0] if val_answers else None,
            "val_majority_share": (val_answers.most_common(1)[0][1] / sum(val_answers.values())
                                   if val_answers else 0.0),
            "boxes": {"min": min(box_counts, default=0), "max": max(box_counts, default=0)},
            "seconds": round(time.time() - start, 2)}
