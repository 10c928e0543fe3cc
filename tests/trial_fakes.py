"""Trial requests and outputs for tests that exercise executors, pinning and the engine's
bookkeeping without caring about every field of a real request."""

from __future__ import annotations

from autoresearch.sandbox.trial import Budget, TrialRequest

BUDGET = Budget(train_examples=10**9, other_examples=10**9, predict_examples=10**9, checkpoint_bytes=64 * 2**20,
                prediction_bytes=16 * 2**20)


def make_request(seeds=(1,), **overrides) -> TrialRequest:
    fields = dict(workspace="/w", harness="/h", train_data="/t", predict_data="/p", work_dir="/x",
                  seeds=tuple(seeds), keys=tuple(f"{s:064x}" for s in seeds), sketch_key="0" * 64,
                  config={"device": "cpu", "threads": 1, "epochs": 1, "batch_size": 16, "num_classes": 10},
                  predict={"batch": 500, "check_rows": [], "check_batch": 37}, budget=BUDGET, train_seconds=1,
                  predict_seconds=1, grace_seconds=1, memory_bytes=2**30, max_processes=8, isolation="bubblewrap")
    fields.update(overrides)
    return TrialRequest(**fields)
