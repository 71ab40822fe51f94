"""Several machines: two "machines" on this host through `python -m paddle.distributed.launch
--nnodes=2` (one CPU process each, gloo) train to the same weights as one process.

This is the path of the several-machines command of docs/training.md: each launched process finds its
rank in the environment (PADDLE_TRAINERS_NUM, ...) and run.py does not spawn. Dropout is 0:
with dropout, each process draws the masks of its own slice, so weights agree only in law.
"""
import os
import socket
import subprocess
import sys

from mmnas.data.synthetic import make_synthetic_vqa
from mmnas.checkpoint_files import safe_load

from test_engine import TINY_YML, assert_same_weights  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launched_nodes_equal_one_process(tmp_path):
    data_root = tmp_path / "data"
    make_synthetic_vqa(str(data_root), n_train_images=40, n_val_images=5, n_test_images=5, n_vg_images=5,
                       questions_per_image=3, seed=1, min_boxes=10, max_boxes=20)
    yml = tmp_path / "tiny.yml"
    yml.write_text(
        f"base: {TINY_YML}\n"
        "model: {hidden_size: 32, heads: 4, rel_head_width: 16, rel_size: 16, flat_mlp: 32, flat_out: 64,\n"
        "        dropout: 0.0, genotype: {enc: [SA, FFN], dec: [GA, RSA, FFN]}}\n"
        f"data: {{data_root: {data_root}, split: train, num_workers: 0}}\n"
        "train: {batch_size: 16, max_epoch: 2, eval_every_epoch: false}\n")
    common = [os.path.join(REPO, "run.py"), "--RUN=train", f"--MODEL={yml}", f"--CKPT_DIR={tmp_path / 'ckpt'}",
              f"--RESULTS_DIR={tmp_path / 'results'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_"))}

    master = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "paddle.distributed.launch", f"--master={master}", "--nnodes=2", f"--rank={rank}",
         "--nproc_per_node=1", f"--log_dir={tmp_path / f'log{rank}'}", "--job_id=two_nodes",
         *common, "--VERSION=two_nodes"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=600)[0])
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        worker_log = open(tmp_path / f"log{rank}" / "workerlog.0", errors="replace").read()
        assert node.returncode == 0, f"node {rank}:\n{out[-2000:]}\n{worker_log[-3000:]}"

    single = subprocess.run([sys.executable, *common, "--VERSION=one"], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    for epoch in (1, 2):
        two = safe_load(str(tmp_path / "ckpt" / "ckpt_two_nodes" / f"epoch{epoch}.pdparams"))
        one = safe_load(str(tmp_path / "ckpt" / "ckpt_one" / f"epoch{epoch}.pdparams"))
        assert_same_weights(two, one, rtol=1e-5)
