"""The optimizer. Editable: proposals may change the update rule and the learning-rate schedule."""
import torch


def build_optimizer(params, *, steps_per_epoch: int, epochs: int):
    """Return (optimizer, scheduler or None); a scheduler is stepped once per batch, so it
    runs for steps_per_epoch * epochs steps in all.

    Baseline: plain stochastic gradient descent at a fixed learning rate, no schedule.
    """
    optimizer = torch.optim.SGD(params, lr=0.01)
    scheduler = None  # e.g. torch.optim.lr_scheduler.<Name>(optimizer, ...)
    return optimizer, scheduler
