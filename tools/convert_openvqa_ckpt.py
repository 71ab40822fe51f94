"""Convert a checkpoint of the original PyTorch MMNasNet (openvqa) into a Paddle .pdparams.

    python tools/convert_openvqa_ckpt.py ckpt/mmnasnet_small.pkl ckpt/mmnasnet_small.pdparams --MODEL small

The output loads with `paddle.load` + `set_state_dict`, and with --CKPT_PATH in run.py.
Reading the input needs torch (CPU build is enough); nothing else in mmnas does.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.configure()  # threads, MKL, and Paddle's known warnings filtered (before Paddle is imported)

from mmnas.config import ConfigError, load_config  # noqa: E402
from mmnas.checkpoint_files import CheckpointError  # noqa: E402
from mmnas.models.convert import convert_openvqa_checkpoint  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Convert an openvqa PyTorch MMNasNet checkpoint (.pkl saved with torch.save) "
                    "to a Paddle .pdparams with the released-checkpoint key layout.")
    p.add_argument("input", metavar="IN.pkl", help="PyTorch checkpoint: a state dict or a dict with "
                   "a `state_dict` entry (`module.` prefixes are stripped)")
    p.add_argument("output", metavar="OUT.pdparams", help="where to write the Paddle weights")
    p.add_argument("--MODEL", default="small",
                   help="config the checkpoint was trained with: small, large, or a YAML path (default: small)")
    p.add_argument("--ARCH_PATH", default=None,
                   help="genotype file (JSON/YAML with enc/dec) overriding the config's, for searched models")
    p.add_argument("--token-size", type=int, default=None,
                   help="expected question vocabulary size T; checked against the checkpoint's embedding")
    p.add_argument("--answer-size", type=int, default=None,
                   help="expected answer vocabulary size A (3129 on VQA-v2); checked against proj.weight")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        sys.exit(f"error: OUT.pdparams is the input file {args.input}; choose another output path")
    try:
        cfg = load_config(args.MODEL, args.ARCH_PATH).model
        summary = convert_openvqa_checkpoint(args.input, args.output, cfg,
                                             args.token_size, args.answer_size)
    except (CheckpointError, ConfigError) as e:
        sys.exit(f"error: {e}")
    print(f"converted {args.input}\n"
          f"  keys:        {summary['keys']}\n"
          f"  token size:  {summary['token_size']} (T, from embedding.weight)\n"
          f"  answer size: {summary['answer_size']} (A, from proj.weight)\n"
          f"  fits:        --MODEL {args.MODEL}" + (f" --ARCH_PATH {args.ARCH_PATH}" if args.ARCH_PATH else "")
          + f"\n  wrote:       {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
