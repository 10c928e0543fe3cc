"""The optimizer. Editable: proposals may change the update rule and the learning-rate schedule."""
import torch


def build_optimizer(params, *, steps_per_epoch: int, epochs: int):
    """Return (optimizer, scheduler or None); a scheduler is stepped once per batch.

    Baseline: plain stochastic gradient descent at a fixed learning rate.
    """
    optimizer = torch.optim.SGD(params, lr=0.05)
    return optimizer, None
