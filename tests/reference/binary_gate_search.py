"""A short seeded binary-gate search whose outcome is stored in binary_gate_search.json.

The numbers were recorded with the code before the search strategies were split out
(`python tests/reference/binary_gate_search.py record`); tests/test_search_strategies.py runs
the same search and compares, so `search.algorithm: binary_gate` keeps MMnas's results. They
were recorded once more when the LR warm-up became the original's rule for any W (this search
has warmup_epochs 0, which now means no warm-up instead of quarters of one epoch); with the old
warm-up the refactored code still reproduced the first recording.
"""
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REFERENCE = os.path.join(HERE, "binary_gate_search.json")
EPOCHS = 3


def search_yaml(folder: str) -> str:
    """2 encoder + 3 decoder positions at hidden 16, one warm-up epoch, then arch steps."""
    path = os.path.join(folder, "reference_search.yml")
    with open(path, "w") as f:
        f.write(f"base: {os.path.join(REPO, 'configs', 'search', 'search_vqa_tiny.yml')}\n"
                "model: {hidden_size: 16, heads: 2, rel_head_width: 8, rel_size: 8, flat_mlp: 16, "
                "flat_out: 32, word_embed: 12}\n"
                "train: {batch_size: 8, warmup_epochs: 0}\n"
                "search: {enc_positions: 2, dec_positions: 3, enc_ops: [SA, FFN, skip], "
                "dec_ops: [SA, GA, RSA, FFN, skip], warmup_epochs: 1, arch_every: 1}\n")
    return path


def make_data(folder: str) -> str:
    from mmnas.data.synthetic import make_synthetic_vqa
    root = os.path.join(folder, "synth")
    make_synthetic_vqa(root, n_train_images=16, n_val_images=4, n_test_images=2, n_vg_images=2,
                       questions_per_image=3, min_boxes=4, max_boxes=8)
    return root


def run(folder: str, data_root: str, version: str = "reference") -> dict:
    """Run the search through the CLI; returns what the reference stores."""
    from mmnas.cli import main as cli_main
    from mmnas.checkpoint_files import safe_load
    code = cli_main(["--RUN=search", f"--MODEL={search_yaml(folder)}", f"--DATA_ROOT={data_root}",
                     f"--CKPT_DIR={os.path.join(folder, 'ckpt')}", f"--RESULTS_DIR={os.path.join(folder, 'results')}",
                     f"--VERSION={version}", f"--MAX_EPOCH={EPOCHS}"])
    assert code == 0
    report = json.load(open(os.path.join(folder, "results", "search", version, f"epoch{EPOCHS}.json")))
    state = safe_load(os.path.join(folder, "ckpt", f"ckpt_{version}", f"epoch{EPOCHS}.pdparams"))
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + np.ascontiguousarray(state[key]).tobytes())
    return {"genotype": report["genotype"], "top_ops": report["top_ops"],
            "probabilities": report["probabilities"],
            "alphas": {k: [float(v) for v in state[k]] for k in sorted(state) if k.endswith(".alpha")},
            "weight_loss": report["weight_loss"], "arch_loss": report["arch_loss"],
            "arch_steps": report["arch_steps"], "top_path_score": report["top_path_score"],
            "weights_sha256": digest.hexdigest()}


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, REPO)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run(tmp, make_data(tmp))
    if sys.argv[1:] == ["record"]:
        with open(REFERENCE, "w") as f:
            json.dump(outcome, f, indent=1)
        print(f"wrote {REFERENCE}")
    else:
        reference = json.load(open(REFERENCE))
        print(json.dumps({k: outcome[k] == reference[k] for k in outcome}))
