"""What optimizer changes can gain on digits-mlp: test accuracy (mean and sd over seeds) of the
baseline MLP trained with the baseline's own loop (train.py's, in-process, no sandbox) under each
optimizer/schedule, each one change or a combination. It shows why the agent asks for one change
per proposal: a combined leap reaches the ceiling at once and leaves nothing for a later change.

    .venv/bin/python scripts/bench_optimizer_landscape.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import numpy as np
import torch
import torch.nn as nn

from autoresearch.benchmark import load_benchmark, materialise_splits

O, L = torch.optim, torch.optim.lr_scheduler


def cosine(opt_fn):
    def make(p, steps):
        opt = opt_fn(p)
        return opt, L.CosineAnnealingLR(opt, steps)
    return make


def plain(opt_fn):
    return lambda p, steps: (opt_fn(p), None)


VARIANTS = {
    "baseline: SGD lr 0.01": plain(lambda p: O.SGD(p, lr=0.01)),
    "SGD lr 0.01, momentum 0.9": plain(lambda p: O.SGD(p, lr=0.01, momentum=0.9)),
    "SGD lr 0.1": plain(lambda p: O.SGD(p, lr=0.1)),
    "SGD lr 0.1, momentum 0.9": plain(lambda p: O.SGD(p, lr=0.1, momentum=0.9)),
    "SGD lr 0.1, momentum 0.9, cosine": cosine(lambda p: O.SGD(p, lr=0.1, momentum=0.9)),
    "SGD lr 0.01, cosine": cosine(lambda p: O.SGD(p, lr=0.01)),
    "Adam lr 1e-3": plain(lambda p: O.Adam(p, lr=1e-3)),
    "Adam lr 3e-3": plain(lambda p: O.Adam(p, lr=3e-3)),
    "Adam lr 1e-2": plain(lambda p: O.Adam(p, lr=1e-2)),
    "Adam lr 1e-3, cosine": cosine(lambda p: O.Adam(p, lr=1e-3)),
    "RMSprop lr 1e-3": plain(lambda p: O.RMSprop(p, lr=1e-3)),
    "Adagrad lr 0.1": plain(lambda p: O.Adagrad(p, lr=0.1)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench = load_benchmark("digits-mlp")
    spec_ = importlib.util.spec_from_file_location("model", bench.repo_dir / "model.py")
    model_mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(model_mod)
    splits = materialise_splits(bench.spec)
    tr, te = splits["train"], splits["test"]
    xtr = torch.tensor(tr.x, dtype=torch.float32).reshape(len(tr.y), -1)
    ytr = torch.tensor(tr.y).long()
    xte = torch.tensor(te.x, dtype=torch.float32).reshape(len(te.y), -1)
    yte = torch.tensor(te.y).long()
    epochs, batch = bench.spec.budget.epochs, bench.spec.budget.batch_size

    def test_accuracy(make, seed: int) -> float:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = model_mod.build_model((xtr.shape[1],), 10)
        n = len(ytr)
        opt, sched = make(model.parameters(), ((n + batch - 1) // batch) * epochs)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):  # the loop of the baseline's train.py
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                loss = loss_fn(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
        with torch.no_grad():
            return float((model(xte).argmax(1) == yte).float().mean())

    print(f"digits-mlp, {epochs} epochs, batch {batch}, test {len(yte)} examples, {args.seeds} seeds each")
    for name, make in VARIANTS.items():
        accs = [test_accuracy(make, s) for s in range(args.seeds)]
        print(f"  {name:36s} test accuracy {np.mean(accs):.4f} (sd {np.std(accs, ddof=1):.4f})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
