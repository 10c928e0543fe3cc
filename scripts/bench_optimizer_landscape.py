"""What optimizer changes can gain on digits-mlp: test accuracy (mean and sd over seeds) of the
baseline MLP trained by the baseline's own train.py (in-process, no sandbox) under each
optimizer/schedule, each one change or a combination. It shows why the agent asks for one change
per proposal: a combined leap reaches the ceiling at once and leaves nothing for a later change.

    .venv/bin/python scripts/bench_optimizer_landscape.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types

import numpy as np
import torch

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


def _load(name: str, path, **modules):
    """Import one file of the baseline's repo as a module, with ``modules`` in place of its imports."""
    sys.modules.update(modules)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench = load_benchmark("digits-mlp")
    # The baseline's own model.py and train.py; optim.py is the variant under test.
    # train.py binds build_optimizer at import: it calls through to the variant of the moment.
    variant = {}
    optim = types.ModuleType("optim")
    optim.build_optimizer = lambda params, *, steps_per_epoch, epochs: variant["make"](params, steps_per_epoch * epochs)
    model_mod = _load("model", bench.repo_dir / "model.py")
    train_mod = _load("train", bench.repo_dir / "train.py", optim=optim)
    splits = materialise_splits(bench.spec)
    tr, te = splits["train"], splits["test"]
    xtr = torch.tensor(tr.x, dtype=torch.float32).reshape(len(tr.y), -1)
    ytr = torch.tensor(tr.y).long()
    xte = torch.tensor(te.x, dtype=torch.float32).reshape(len(te.y), -1)
    yte = torch.tensor(te.y).long()
    epochs, batch = bench.spec.budget.epochs, bench.spec.budget.batch_size

    def test_accuracy(make, seed: int) -> float:
        variant["make"] = make
        torch.manual_seed(seed)
        model = model_mod.build_model((xtr.shape[1],), 10)
        train_mod.fit(model, xtr, ytr, epochs=epochs, batch_size=batch, generator=torch.Generator().manual_seed(seed),
                      device="cpu")
        model.eval()
        with torch.no_grad():
            return float((model(xte).argmax(1) == yte).float().mean())

    print(f"digits-mlp, {epochs} epochs, batch {batch}, test {len(yte)} examples, {args.seeds} seeds each "
          "(the baseline's train.py and model.py, in-process, no sandbox)")
    for name, make in VARIANTS.items():
        accs = [test_accuracy(make, s) for s in range(args.seeds)]
        print(f"  {name:36s} test accuracy {np.mean(accs):.4f} (sd {np.std(accs, ddof=1):.4f})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
