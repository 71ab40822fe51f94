"""The published learning-rate schedule: step-wise warm-up, then decay after chosen epochs.

With E = data_size / batch_size (a float: the original divides before truncating) and
W = warmup_epochs, step s (counted from 1 over the whole run) uses
    base * 1/(W+1)  while s <= int(E * (W+1) * 0.25)
    base * 2/(W+1)  while s <= int(E * (W+1) * 0.5)
    base * 3/(W+1)  while s <= int(E * (W+1) * 0.75)
    base            afterwards
(VQA-v2's W = 3 gives quarters of base; GQA's W = 2 gives base/3, 2base/3, then base already
in the third quarter). A factor is never above 1: the original's formula would step above base
for W < 2, which no published recipe uses; here W = 1 gives base/2, then base, and W = 0 no
warm-up. The result is multiplied by decay_rate once for every entry of decay_epochs that is
<= the current epoch (epochs counted from 0, so [10, 12] decays after 10 and after 12 finished
epochs).
"""
from typing import Sequence


def learning_rate(step: int, epoch: int, epoch_steps: float, base: float, warmup_epochs: int,
                  decay_epochs: Sequence[int], decay_rate: float) -> float:
    """epoch_steps: data_size / batch_size as a float (the warm-up boundaries use it)."""
    warmup_steps = epoch_steps * (warmup_epochs + 1)
    lr = base
    for quarter in (1, 2, 3):
        if step <= int(warmup_steps * quarter * 0.25):
            lr = base * min(quarter, warmup_epochs + 1) / (warmup_epochs + 1)
            break
    for decay_epoch in decay_epochs:
        if epoch >= decay_epoch:
            lr *= decay_rate
    return lr


def base_learning_rate(train_cfg, split: str) -> float:
    """The published recipe uses a lower base LR when Visual Genome questions are added."""
    return train_cfg.lr_base_vg if "vg" in split.split("+") else train_cfg.lr_base
