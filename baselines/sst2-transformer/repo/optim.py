"""The optimizer. Editable: proposals may change the update rule and the learning-rate schedule."""
import torch


def build_optimizer(params, *, steps_per_epoch: int, epochs: int):
    """Return (optimizer, scheduler or None); a scheduler is stepped once per batch.

    Baseline: AdamW at a fixed learning rate, no warm-up or decay.
    """
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)
    return optimizer, None
