"""The published learning-rate schedule: step-wise warm-up, then decay after chosen epochs.

With S steps per epoch and W = warmup_epochs, step s (counted from 1 over the whole run) uses
    base * 1/4  while s <= int(S * (W+1) * 0.25)
    base * 2/4  while s <= int(S * (W+1) * 0.5)
    base * 3/4  while s <= int(S * (W+1) * 0.75)
    base        afterwards,
and the result is multiplied by decay_rate once for every entry of decay_epochs that is <= the
current epoch (epochs counted from 0, so [10, 12] decays after 10 and after 12 finished epochs).
"""
from typing import Sequence


def learning_rate(step: int, epoch: int, steps_per_epoch: int, base: float, warmup_epochs: int,
                  decay_epochs: Sequence[int], decay_rate: float) -> float:
    warmup_steps = steps_per_epoch * (warmup_epochs + 1)
    lr = base
    for quarter in (1, 2, 3):
        if step <= int(warmup_steps * quarter * 0.25):
            lr = base * quarter / 4
            break
    for decay_epoch in decay_epochs:
        if epoch >= decay_epoch:
            lr *= decay_rate
    return lr


def base_learning_rate(train_cfg, split: str) -> float:
    """The published recipe uses a lower base LR when Visual Genome questions are added."""
    return train_cfg.lr_base_vg if "vg" in split.split("+") else train_cfg.lr_base
