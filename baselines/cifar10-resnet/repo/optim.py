"""The optimizer. Editable: proposals may change the update rule and the learning-rate schedule.

airbench-style: Nesterov SGD, a large learning rate for the BatchNorm shifts and biases, decoupled
from the batch size through the "kilostep" scale, with a short warm-up and a linear decay to zero.
"""
import torch


def build_optimizer(model, *, steps_per_epoch: int, epochs: int, batch_size: int):
    """Return (optimizer, scheduler or None); a scheduler is stepped once per batch."""
    lr, momentum, weight_decay, bias_scaler = 11.5, 0.85, 0.0153, 64.0
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = lr / kilostep_scale, weight_decay * batch_size / kilostep_scale
    norm_biases = [p for n, p in model.named_parameters() if p.requires_grad and ("norm" in n or n.endswith("bias"))]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not ("norm" in n or n.endswith("bias"))]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr * bias_scaler, weight_decay=wd / bias_scaler),
                                 dict(params=others, lr=lr, weight_decay=wd)],
                                momentum=momentum, nesterov=True)
    total = steps_per_epoch * epochs
    warmup = max(1, int(0.23 * total))

    def schedule(step: int) -> float:
        if step < warmup:
            return 0.2 + 0.8 * step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
