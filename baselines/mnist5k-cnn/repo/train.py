"""The training loop. Editable: proposals may change how batches are formed and the loss.

The harness calls `fit` once with the seeded generator and the fixed budget (epochs, batch
size); it must return a dict with the final training loss.
"""
import torch
import torch.nn as nn

from optim import build_optimizer


def fit(model, x, y, *, epochs, batch_size, generator, device):
    n = x.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    optimizer, scheduler = build_optimizer(model.parameters(), steps_per_epoch=steps_per_epoch, epochs=epochs)
    loss_fn = nn.CrossEntropyLoss()
    loss = torch.tensor(float("nan"))
    model.train()
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    return {"final_loss": float(loss.item())}
