"""Shared fixtures. Every test is offline; model hubs are switched off for the whole session."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import tomlkit

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AUTORESEARCH = str(Path(sys.executable).parent / "autoresearch")
# The same command with canned trials (tests/fake_executor.py) instead of sandboxed training: for
# tests of the CLI's and the engine's logic, not of trials.
FAKE_AUTORESEARCH = [PYTHON, str(Path(__file__).resolve().parent / "fake_cli.py")]


def write_spec(root: Path, **budget_overrides) -> None:
    """Rewrite a copied benchmark's spec.toml with other budget values (tests need short timeouts)."""
    doc = tomlkit.parse((root / "spec.toml").read_text())
    for key, value in budget_overrides.items():
        doc["budget"][key] = value
    (root / "spec.toml").write_text(tomlkit.dumps(doc))


def copy_benchmark(dest: Path, name: str = "digits-mlp", **budget_overrides) -> Path:
    src = REPO_ROOT / "baselines" / name
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if budget_overrides:
        write_spec(dest, **budget_overrides)
    return dest


@pytest.fixture
def fake_trials(monkeypatch):
    """Every local executor in this process runs canned trials (tests/fake_executor.py)."""
    from fake_executor import FakeExecutor

    fake = FakeExecutor()
    monkeypatch.setattr("autoresearch.sandbox.executors.run_trials", fake.run)
    return fake


# digits-mlp trains a seed in well under a second here: 8 s (plus the per-seed grace) is ample,
# and an endless loop is killed within seconds.
FAST_BUDGET = {"train_seconds": 8, "predict_seconds": 8, "grace_seconds": 5}


@pytest.fixture(scope="session")
def fast_bench(tmp_path_factory) -> Path:
    """digits-mlp with short wall-clock budgets so that timeouts are quick to reach."""
    return copy_benchmark(tmp_path_factory.mktemp("bench") / "digits-fast", **FAST_BUDGET)


def proposal_line(title: str, edits: list[dict], hypothesis: str = "test") -> str:
    return json.dumps({"title": title, "hypothesis": hypothesis, "edits": edits})


ADAM = proposal_line("Adam optimizer", [{"path": "optim.py", "search": "optimizer = torch.optim.SGD(params, lr=0.01)",
                                         "replace": "optimizer = torch.optim.Adam(params, lr=1e-3)"}],
                     "adaptive step sizes converge faster than SGD at lr 0.01")
COMMENT_ONLY = proposal_line("Add a comment", [{"path": "train.py", "search": "    loss_fn = nn.CrossEntropyLoss()",
                                                "replace": "    # cross-entropy on logits\n    loss_fn = nn.CrossEntropyLoss()"}])
