"""Making a run folder and opening one again: the resolved config, the prepared data (checked
against the spec's pins, and against the run's own on reopening), the git repo, the ledger.

``create_run`` and ``open_run`` return the parts a ``RunEngine`` is made of; they decide nothing
about proposals.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch import envinfo
from autoresearch.benchmark import Benchmark, BenchmarkError, PreparedData, load_benchmark, prepare_data
from autoresearch.config import RunConfig
from autoresearch.datasets import DataMismatch
from autoresearch.gate import GateConfig
from autoresearch.ledger import Ledger, LedgerError, dumps
from autoresearch.outcomes import Events, slugify
from autoresearch.records import RunRepo
from autoresearch.sandbox.isolation import IsolationUnavailable, isolation_level
from autoresearch.seeding import draw_seeds, new_secret


@dataclass
class RunParts:
    """Everything a RunEngine is built from."""

    run_dir: Path
    run_id: str
    bench: Benchmark
    data: PreparedData
    ledger: Ledger
    repo: RunRepo
    config: RunConfig
    gate: GateConfig
    verify_count: int
    isolation: str
    device: str
    env: dict
    secret: str
    gate_seeds: list[int] | None = None  # a protocol-1 run's fixed seeds (shown only); None: drawn from the secret


def new_run_id(benchmark: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slugify(benchmark, 24)}-{secrets.token_hex(3)}"


def gate_config(config: RunConfig, bench: Benchmark) -> GateConfig:
    """The run's gate: the spec's design with the run's options (``GateSpec.design``)."""
    try:
        return bench.spec.gate.design(proposals=config.proposals, alpha=config.alpha, min_delta=config.min_delta,
                                      stages=config.stages, seeds=config.seeds)
    except ValueError as exc:
        raise BenchmarkError(f"invalid gate design: {exc}") from None


def create_run(config: RunConfig, events: Events) -> RunParts:
    """A new run folder: config.json, the prepared data, the repo at the baseline, the ledger's run row."""
    bench = load_benchmark(config.benchmark)
    isolation = isolation_level(config.isolation)
    device = envinfo.resolve_device(config.device)
    gate = gate_config(config, bench)
    secret = new_secret()  # before anything is made: a bad AUTORESEARCH_RUN_SECRET leaves nothing behind
    runs_dir = Path(config.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"cannot create runs directory {runs_dir}: {exc.strerror}") from None
    if not os.access(runs_dir, os.W_OK):
        raise LedgerError(f"runs directory {runs_dir} is not writable")
    run_id = new_run_id(bench.name)
    run_dir = (runs_dir / run_id).resolve()
    run_dir.mkdir()
    events.stage("preparing data")
    data = prepare_data(bench, run_dir / "data", secret)
    env = envinfo.environment(device, isolation)
    resolved = {"run": json.loads(config.model_dump_json()), "gate": gate.to_dict(),
                "verify_seeds": bench.spec.gate.verify_seeds,
                "budget": bench.spec.budget.model_dump(), "benchmark": bench.spec.model_dump(),
                "benchmark_root": str(bench.root), "predict_fingerprint": data.predict_fingerprint,
                "seeds": {"gate": draw_seeds(secret, "gate", gate.max_seeds),
                          "verify": draw_seeds(secret, "verify", bench.spec.gate.verify_seeds)}}
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    repo = RunRepo.create(run_dir / "repo", bench.template_files(),
                          f"baseline: {bench.name} v{bench.spec.version} template\n\n"
                          f"Autoresearch-Data: {dumps(data.fingerprints)}\n")
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.create_run(id=run_id, benchmark=bench.name, benchmark_version=bench.spec.version, idea=config.idea,
                      config_json=dumps(resolved), fingerprints_json=dumps(data.fingerprints),
                      counts_json=dumps(data.counts), env_json=dumps(env), isolation=isolation,
                      baseline_commit=repo.baseline, secret=secret)
    return RunParts(run_dir=run_dir, run_id=run_id, bench=bench, data=data, ledger=ledger, repo=repo, config=config,
                    gate=gate, verify_count=bench.spec.gate.verify_seeds, isolation=isolation, device=device, env=env,
                    secret=secret)


def open_run(run_dir: Path, *, slots: int | None = None, read_only: bool = False,
             isolation: str | None = None) -> RunParts:
    """An existing run (resume, replay --verify): data is re-prepared and re-checked.
    ``read_only`` (show) skips data preparation and trusts the recorded fingerprints."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "ledger.sqlite").is_file():
        raise LedgerError(f"{run_dir} is not a run folder (no ledger.sqlite)")
    ledger = Ledger(run_dir / "ledger.sqlite")
    row = ledger.only_run()
    resolved = json.loads(row["config_json"])
    run_cfg = dict(resolved["run"])
    if slots is not None:
        run_cfg["slots"] = slots
    if isolation is not None:  # resume --isolation: this session only, never written back
        run_cfg["isolation"] = isolation
    config = RunConfig.model_validate(run_cfg)
    bench_ref = resolved.get("benchmark_root") or config.benchmark
    bench = load_benchmark(bench_ref if Path(bench_ref).is_dir() else config.benchmark)
    if bench.spec.version != row["benchmark_version"]:
        raise DataMismatch(f"run used {bench.name} v{row['benchmark_version']}, this machine has v{bench.spec.version}")
    secret = row.get("secret") or ""
    if read_only:
        data = PreparedData(public_dir=run_dir / "data" / "public", labels_dir=run_dir / "data" / "labels",
                            fingerprints=json.loads(row["fingerprints_json"]), counts=json.loads(row["counts_json"]),
                            predict_fingerprint=resolved.get("predict_fingerprint", ""))
    elif not secret:
        raise LedgerError(f"{run_dir} was made by an older autoresearch (fixed public seeds, trial protocol 1); "
                          "it can be shown, not resumed or re-verified")
    else:
        data = prepare_data(bench, run_dir / "data", secret)
        if data.predict_fingerprint != resolved.get("predict_fingerprint"):
            raise DataMismatch("the predict set prepared now differs from the one this run was started on")
    if data.fingerprints != json.loads(row["fingerprints_json"]):
        raise DataMismatch("the data prepared now differs from the data this run was started on; refusing to go on")
    try:
        gate = GateConfig(**resolved["gate"])
    except (TypeError, ValueError):
        if not read_only:
            raise LedgerError(f"{run_dir} was judged by gate v1 (fixed seeds, paired t); it can be shown, not "
                              "resumed or re-verified") from None
        old = resolved["gate"]  # shown only: its numbers come from the records, not from this design
        gate = GateConfig(alpha=old.get("alpha", 0.05), proposals=old.get("proposals", 1))
    level = row["isolation"] if read_only else isolation_level(config.isolation)
    if level != row["isolation"] and row["isolation"] == "bubblewrap":
        raise IsolationUnavailable("this run was started in the bubblewrap sandbox; it cannot go on without it")
    device = json.loads(row["env_json"]).get("device", "cpu").split(" ")[0] if read_only else \
        envinfo.resolve_device(config.device)
    parts = RunParts(run_dir=run_dir, run_id=row["id"], bench=bench, data=data, ledger=ledger,
                     repo=RunRepo(run_dir / "repo"), config=config, gate=gate,
                     verify_count=int(resolved.get("verify_seeds", 5)), isolation=level, device=device,
                     env=json.loads(row["env_json"]), secret=secret or "00" * 32)
    if not secret:  # a protocol-1 run, shown read-only: its seeds were the spec's fixed bases
        parts.gate_seeds = sorted({r["seed"] for r in ledger.trials(row["id"]) if r["role"] == "incumbent"})
    return parts
