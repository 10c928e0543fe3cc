"""The training loop. Editable: proposals may change augmentation, batching and the loss.

The harness calls `fit` once with the seeded generator and the fixed budget (epochs, batch
size); it must return a dict with the final training loss.
"""
import torch
import torch.nn.functional as F

from optim import build_optimizer


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random mirror and random translation by up to 2 pixels (reflection padding), on the device."""
    n = x.size(0)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()  # one shift per batch: cheap, still varied
    return padded[:, :, dy:dy + x.size(2), dx:dx + x.size(3)]


def fit(model, x, y, *, epochs, batch_size, generator, device):
    n = x.shape[0]
    steps_per_epoch = n // batch_size if n >= batch_size else 1
    model.init_whiten(x[:5000])
    optimizer, scheduler = build_optimizer(model, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                           batch_size=batch_size)
    use_amp = device.type == "cuda"
    loss = torch.tensor(float("nan"))
    model.train()
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            inputs = augment(x[idx], generator)
            if use_amp:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=0.2, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return {"final_loss": float(loss.item()) / batch_size}
