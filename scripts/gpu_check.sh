#!/usr/bin/env bash
# GPU check (< 5 minutes, no network): on a machine with CUDA, run
#   1. one tiny CUDA trial through the sandbox, pinned to one GPU (only it visible inside);
#   2. the cifar10-resnet baseline on synthetic CIFAR-shaped data (50,000 train / 10,000 test,
#      uint8 [N, 3, 32, 32], random labels: timing only, the accuracy is meaningless) through the
#      sandboxed harness, and print the figures.
#   bash scripts/gpu_check.sh            # uses .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" - <<'PYEOF'
import io, json, os, tempfile, time
from pathlib import Path

import numpy as np
import torch

from autoresearch.benchmark import load_benchmark
from autoresearch.sandbox.executors import pin_request
from autoresearch.sandbox.isolation import isolation_level
from autoresearch.sandbox.trial import Budget, TrialRequest, run_trials

assert torch.cuda.is_available(), "no CUDA here: nothing to check"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
isolation = isolation_level()
print(f"isolation: {isolation}")


def trial(bench, x, y, xt, epochs, batch, tmp, gpu, seeds=(1, 2)):
    """One warm trial request (one train and one predict sandbox, a forked child per seed)."""
    tmp = Path(tmp)
    (tmp / "train").mkdir(); (tmp / "predict").mkdir()
    np.save(tmp / "train" / "train_x.npy", x); np.save(tmp / "train" / "train_y.npy", y)
    np.save(tmp / "predict" / "inputs.npy", xt)
    n = int(x.shape[0])
    budget = Budget(train_examples=int(epochs * n * 1.01) + 1, other_examples=n + 64,
                    predict_examples=int(xt.shape[0] * 1.2) + 64, checkpoint_bytes=256 * 2**20,
                    prediction_bytes=64 * 2**20)
    req = TrialRequest(workspace=str(bench.repo_dir), harness=str(bench.harness_dir), train_data=str(tmp / "train"),
                       predict_data=str(tmp / "predict"), work_dir=str(tmp / "work"), seeds=tuple(seeds),
                       keys=tuple(f"{s:064x}" for s in seeds), sketch_key="1" * 64,
                       config={"epochs": epochs, "batch_size": batch, "threads": 4, "device": "cuda",
                               "num_classes": 10},
                       predict={"batch": 500, "check_rows": list(range(0, xt.shape[0], 97)), "check_batch": 37},
                       budget=budget, train_seconds=240, predict_seconds=60, grace_seconds=60,
                       memory_bytes=32 * 2**30, max_processes=256, isolation=isolation)
    req = pin_request(req, f"cuda:{gpu}")
    t = time.perf_counter()
    outs = run_trials(req)
    wall = time.perf_counter() - t
    for out in outs:
        if out.status.value != "ok":
            print(out.detail); print(out.log_tail[-4000:]); raise SystemExit(1)
    return outs, wall


rng = np.random.default_rng(0)
gpu = torch.cuda.device_count() - 1  # the last GPU: shows the pinning maps it to cuda:0 inside
with tempfile.TemporaryDirectory() as tmp:
    mnist = load_benchmark("mnist5k-cnn")
    outs, wall = trial(mnist, rng.integers(0, 256, (512, 1, 28, 28), dtype=np.uint8),
                       rng.integers(0, 10, 512).astype(np.int64), rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8),
                       1, 64, tmp, gpu)
    out = outs[0]
    print(f"[1] tiny CUDA trial via sandbox on host GPU {gpu}, 2 seeds in one warm request: ok; device reported "
          f"{out.train_report.get('device')}; ran as {out.device}; determinism {out.train_report.get('determinism')}; "
          f"wall {wall:.1f}s (phase sandboxes: train {out.train.sandbox:.1f}s, predict {out.predict.sandbox:.1f}s; "
          f"per seed train {[round(o.train.run, 2) for o in outs]}s, predict {[round(o.predict.run, 2) for o in outs]}s)")
with tempfile.TemporaryDirectory() as tmp:
    cifar = load_benchmark("cifar10-resnet")
    b = cifar.spec.budget
    x = rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8)
    outs, wall = trial(cifar, x, rng.integers(0, 10, 50000).astype(np.int64),
                       rng.integers(0, 256, (11000, 3, 32, 32), dtype=np.uint8), b.epochs, b.batch_size, tmp, gpu,
                       seeds=(1,))
    out = outs[0]
    rep = out.train_report
    print(f"[2] cifar10-resnet baseline, synthetic 50,000 x 3x32x32, {b.epochs} epochs, batch {b.batch_size}: "
          f"train child {out.train.run:.1f}s (sandbox + interpreter + torch start {out.train.start:.1f}s), predict child "
          f"(11,000 inputs, mirror TTA) {out.predict.run:.1f}s; "
          f"whole trial {wall:.1f}s; device {rep.get('device')}; bit-reproducible: "
          f"{rep.get('determinism')}")
    logits = np.load(io.BytesIO(out.logits))
    print(f"    logits {logits.shape} finite={bool(np.isfinite(logits).all())} (random labels: accuracy ~10% expected)")
PYEOF
