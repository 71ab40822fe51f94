#!/usr/bin/env bash
# The main job end to end on the synthetic dataset, as the README's first command runs it:
# make a virtual environment, install, generate data, train with val after every epoch,
# evaluate the last checkpoint on val, write the test2015 result file.
# Environment: PYTHON (default python3), VENV (default .venv), EPOCHS (default 6).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EPOCHS=${EPOCHS:-6}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -r requirements.txt -e .
PY="$VENV/bin/python"

"$PY" tools/make_synthetic_vqa.py --out data --train-images 800 --val-images 200 --test-images 100 --vg-images 100
"$PY" run.py --RUN=train --MODEL=tiny --SPLIT=train --VERSION=demo --MAX_EPOCH="$EPOCHS" --PRELOAD=True
"$PY" run.py --RUN=val  --MODEL=tiny --CKPT_V=demo --CKPT_E="$EPOCHS" --PRELOAD=True
"$PY" run.py --RUN=test --MODEL=tiny --CKPT_V=demo --CKPT_E="$EPOCHS" --PRELOAD=True
echo "done: checkpoints in ckpt/ckpt_demo/, val results in results/cache/, test answers in results/result_test/,"
echo "logs in results/log/log_run_demo.txt; watch curves with: $VENV/bin/visualdl --logdir results/vdl --language en"
