"""Convert a MILVLG/mmnas grounding (full_vgd.py) or matching (full_itm.py) PyTorch checkpoint
into a Paddle .pdparams for this project's grounding or matching model.

    python tools/convert_mmnas_ckpt.py ckpt/mmnas_vgd_refcoco.pkl ckpt/vgd_refcoco.pdparams --MODEL vgd_small
    python tools/convert_mmnas_ckpt.py ckpt/mmnas_itm_flickr.pkl ckpt/itm_flickr.pdparams --MODEL itm_small

The task comes from the config's dataset (vgd_*: grounding, itm_*: matching). The output loads
with --CKPT_PATH in run.py. Reading the input needs torch (the CPU build is enough).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmnas import runtime  # noqa: E402

runtime.configure()  # threads, MKL, and Paddle's known warnings filtered (before Paddle is imported)

from mmnas.checkpoint_files import CheckpointError  # noqa: E402
from mmnas.config import ConfigError, load_config  # noqa: E402
from mmnas.models.convert import read_torch_checkpoint  # noqa: E402
from mmnas.models.grounding_convert import convert_vgd_checkpoint  # noqa: E402
from mmnas.models.grounding_head import MMNasForGrounding  # noqa: E402
from mmnas.models.matching_convert import convert_itm_checkpoint  # noqa: E402
from mmnas.tasks import task_of  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Convert a MILVLG/mmnas grounding or matching PyTorch checkpoint to a Paddle .pdparams.")
    p.add_argument("input", metavar="IN.pkl", help="PyTorch checkpoint: a state dict or a dict with "
                   "a `state_dict` entry (`module.` prefixes are stripped)")
    p.add_argument("output", metavar="OUT.pdparams", help="where to write the Paddle weights")
    p.add_argument("--MODEL", default="vgd_small",
                   help="config the checkpoint was trained with: vgd_small, itm_small, or a YAML path (default: vgd_small)")
    p.add_argument("--ARCH_PATH", default=None,
                   help="genotype file (JSON/YAML with enc/dec) overriding the config's, for searched models")
    return p.parse_args(argv)


def convert(input_path: str, output_path: str, model: str, arch_path=None) -> dict:
    """Convert for the task of config `model`; CheckpointError / ConfigError for what does not fit."""
    cfg = load_config(model, arch_path)
    task = task_of(cfg).name
    if task == "grounding":
        token_size = int(read_torch_checkpoint(input_path)["embedding.weight"].shape[0])
        summary = convert_vgd_checkpoint(input_path, output_path, cfg.model.enc, cfg.model.dec,
                                         model=MMNasForGrounding(cfg.model, token_size))
    elif task == "matching":
        summary = convert_itm_checkpoint(input_path, output_path, cfg.model)
    else:
        raise ConfigError(f"--MODEL {model} is a config of the {task} task; this tool converts MILVLG/mmnas grounding "
                          f"(vgd_*) and matching (itm_*) checkpoints; openvqa VQA checkpoints: "
                          f"tools/convert_openvqa_ckpt.py")
    return dict(summary, task=task)


def main(argv=None):
    args = parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        sys.exit(f"error: OUT.pdparams is the input file {args.input}; choose another output path")
    try:
        summary = convert(args.input, args.output, args.MODEL, args.ARCH_PATH)
    except (CheckpointError, ConfigError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(f"converted {args.input} ({summary['task']})\n"
          f"  keys:        {summary['keys']}\n"
          f"  token size:  {summary['token_size']} (T, from embedding.weight)\n"
          f"  fits:        --MODEL {args.MODEL}" + (f" --ARCH_PATH {args.ARCH_PATH}" if args.ARCH_PATH else "")
          + f"\n  wrote:       {summary['out']}")
    return summary


if __name__ == "__main__":
    main()
