"""Web demo (Gradio): ask the model about an image in the browser; see docs/predict.md, section "Web demo".

    pip install -e ".[demo]"
    python tools/demo_web.py --MODEL=tiny --CKPT_V=demo --CKPT_E=6 --FEATS_DIR=data/vqa/feats/val2014
    # then open http://127.0.0.1:7860/

Exit status 2 with one sentence when Gradio is missing or the weights/folder cannot be used.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.filter_paddle_noise()  # Paddle's known warnings filtered; web_demo.main configures threads

from mmnas.web_demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
