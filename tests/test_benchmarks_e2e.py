"""mnist5k-cnn trains and gates end to end on CPU; the report shows the secondary metrics, the
device of each trial and its bit-reproducibility. The other benchmarks' harness and editable repo
train and predict through the sandbox on tiny synthetic data of their real shapes."""

from __future__ import annotations

import io

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import load_benchmark
from autoresearch.datasets import encode_text_bytes
from autoresearch.sandbox.isolation import bubblewrap_works
from autoresearch.sandbox.trial import run_trials
from trial_fakes import make_request
from conftest import AUTORESEARCH, proposal_line

pytestmark = pytest.mark.slow

MOMENTUM = proposal_line("SGD with momentum 0.9", [{"path": "optim.py",
                                                    "search": "optimizer = torch.optim.SGD(params, lr=0.05)",
                                                    "replace": "optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)"}])


def test_mnist5k_cnn_gates_end_to_end(tmp_path):
    # 16 paired seeds: momentum's gain here is about one seed-to-seed standard deviation (+0.03,
    # sd ~0.03 on this weak baseline), so with 4 seeds the run's own random seeds decided it (p=0.056,
    # rejected, in one CI run); at 16 the expected t is ~4 and a miss is below 1%.
    proposals = tmp_path / "p.jsonl"
    proposals.write_text(MOMENTUM + "\n")
    runs = tmp_path / "runs"
    out = subprocess.run([AUTORESEARCH, "run", "--benchmark", "mnist5k-cnn", "--proposals-file", str(proposals),
                          "--runs-dir", str(runs), "--seeds", "16", "--slots", "2", "--no-verify", "--device", "cpu"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = list(runs.iterdir())
    summary = json.loads(subprocess.run([AUTORESEARCH, "show", str(run_dir), "--json"], capture_output=True,
                                        text=True, timeout=120).stdout)
    (prop,) = summary["proposals"]
    assert prop["decision"] == "accepted", prop
    assert summary["counts"] == {"train": 3000, "val": 1000, "test": 1000}
    incumbent = [s["test"] for s in prop["per_seed"] if s["role"] == "incumbent"]
    # A real, textbook-weak baseline: its median seed in range, every seed far above chance (0.1).
    # Not every seed in range: over 16 seeds one fell to 0.788 in a CI run (the others 0.88-0.92).
    assert 0.8 < sorted(incumbent)[len(incumbent) // 2] < 0.97 and min(incumbent) > 0.5 and len(incumbent) == 16
    report = (run_dir / prop["report"]).read_text()
    assert "## Secondary metrics" in report and "macro-F1" in report
    seed = prop["per_seed"][0]["seed"]
    row = next(line for line in report.split("## Secondary metrics")[1].splitlines()
               if line.startswith(f"| {seed} |"))
    assert 0.8 < float(row.split("|")[2]) <= 1.0  # candidate macro-F1
    assert f"seed {seed} on cpu: bit-reproducible" in report


def _smoke(name: str, x: np.ndarray, y: np.ndarray, tmp_path: Path, epochs: int = 1, batch: int = 16):
    """Train + predict two seeds of a benchmark's real harness/repo in the sandbox on tiny data."""
    bench = load_benchmark(name)
    train, predict = tmp_path / "train", tmp_path / "predict"
    train.mkdir()
    predict.mkdir()
    np.save(train / "train_x.npy", x)
    np.save(train / "train_y.npy", y)
    np.save(predict / "inputs.npy", x[:16])
    base = make_request(seeds=(3, 4))
    req = make_request(seeds=(3, 4), workspace=str(bench.repo_dir), harness=str(bench.harness_dir),
                       train_data=str(train), predict_data=str(predict), work_dir=str(tmp_path / "work"),
                       config=base.config | {"epochs": epochs, "batch_size": batch,
                                             "num_classes": int(bench.spec.data.num_classes)},
                       predict={"batch": 500, "check_rows": [5, 1, 9], "check_batch": 2},
                       train_seconds=240, predict_seconds=120, grace_seconds=30, memory_bytes=4 * 2**30,
                       # The harness and template are trusted code: unsandboxed where bubblewrap cannot run.
                       max_processes=64, isolation="bubblewrap" if bubblewrap_works() else "none",
                       packages=("numpy", "torch", *bench.spec.sandbox.packages))
    outs = run_trials(req)
    for out in outs:
        assert out.status.value == "ok", out.detail + "\n" + out.log_tail[-3000:]
        assert out.device == "cpu"
        assert out.train_report["determinism"]["deterministic_algorithms"] is True
        logits = np.load(io.BytesIO(out.logits))
        assert logits.shape == (16, bench.spec.data.num_classes) and logits.dtype == np.float32
        assert np.isfinite(logits).all()
        assert np.allclose(np.load(io.BytesIO(out.check)), logits[[5, 1, 9]], rtol=1e-4, atol=1e-5)
    return outs


def test_cifar10_resnet_harness_on_synthetic_images(tmp_path):
    rng = np.random.default_rng(0)
    _smoke("cifar10-resnet", rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8),
           rng.integers(0, 10, 64).astype(np.int64), tmp_path, batch=32)


def test_mnist_cnn_harness_on_synthetic_images(tmp_path):
    rng = np.random.default_rng(0)
    _smoke("mnist-cnn", rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8),
           rng.integers(0, 10, 64).astype(np.int64), tmp_path)


def test_sst2_transformer_harness_on_synthetic_sentences(tmp_path):
    pytest.importorskip("transformers")
    texts = [f"this film is {'wonderful' if i % 2 else 'dreadful'} , number {i} ." for i in range(48)]
    _smoke("sst2-transformer", encode_text_bytes(texts, 256), np.array([i % 2 for i in range(48)], dtype=np.int64),
           tmp_path)
