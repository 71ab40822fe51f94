"""Command-line flags shared by bench/train_step.py and bench/eval.py: the model, the inputs
(batch, box counts) and the runtime settings. Only argparse here: the scripts parse their
flags and call `configure_runtime` before numpy or Paddle is imported, so the thread settings
apply to both."""
import argparse


def input_parser(description: str, batch: int, batch_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="small", help="small | large | a config path")
    p.add_argument("--batch", type=int, default=batch, help=batch_help)
    p.add_argument("--n100", action="store_true", help="every sample has n = --n-max regions")
    p.add_argument("--n-min", type=int, default=10)
    p.add_argument("--n-max", type=int, default=100)
    p.add_argument("--defaults", action="store_true", help="Paddle's defaults: no mmnas.runtime.configure()")
    p.add_argument("--threads", type=int, default=None, help="force a thread count")
    p.add_argument("--seed", type=int, default=0)
    return p


def configure_runtime(args) -> None:
    """mmnas.runtime.configure() unless --defaults (measure Paddle's own settings); Paddle's
    known warnings are filtered either way."""
    from mmnas import runtime
    if args.defaults:
        runtime.filter_paddle_noise()
    else:
        runtime.configure(threads=args.threads)
