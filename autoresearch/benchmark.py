"""Benchmarks: a folder with `spec.toml`, a frozen harness and an editable `repo/`.

The harness is either one of the built-in harnesses shipped in `autoresearch/harnesses/`, named by
the spec's `harness` key (one copy of the trusted code serves every benchmark that uses it), or
the folder's own `harness/` (a user's custom harness, or a copy made by `init-benchmark`).
Adding a benchmark is adding a folder; nothing here names a particular one.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoresearch.datasets import (DataMismatch, Split, assign_source_splits, fingerprint_arrays, fingerprint_split,
                                   is_pinned, load_pool, permutation_split)
from autoresearch.integrity import IntegritySpec, PredictLayout, build_predict_set


class BenchmarkError(ValueError):
    """A benchmark that cannot be found or whose spec is malformed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    source: str = Field(description="name of a registered data source, e.g. sklearn-digits")
    options: dict = Field(default_factory=dict, description="source-specific options")
    split_seed: int = Field(description="seed of the fixed permutation that cuts the pool")
    sizes: dict[str, int] = Field(description="split name -> number of examples, in permutation order")
    num_classes: int = Field(gt=1)
    fingerprints: dict[str, str] = Field(description="split name -> sha256 of its canonical bytes")

    @field_validator("sizes")
    @classmethod
    def _needs_train_val_test(cls, v: dict[str, int]) -> dict[str, int]:
        missing = {"train", "val", "test"} - set(v)
        if missing:
            raise ValueError(f"sizes must name train, val and test (missing {sorted(missing)})")
        if any(n <= 0 for n in v.values()):
            raise ValueError("split sizes must be positive")
        return v


class MetricSpec(_Strict):
    name: Literal["accuracy"] = "accuracy"
    direction: Literal["higher", "lower"] = "higher"


class BudgetSpec(_Strict):
    epochs: int = Field(gt=0, description="epochs handed to the editable training loop")
    batch_size: int = Field(gt=0)
    train_seconds: float = Field(gt=0, description="wall-clock budget of the train phase")
    predict_seconds: float = Field(gt=0, description="wall-clock budget of the predict phase")
    grace_seconds: float = Field(default=20.0, ge=0, description="interpreter start-up allowance on top of each budget")
    threads: int = Field(default=1, gt=0, description="CPU threads per trial")
    memory_mb: int = Field(default=4096, gt=64)
    max_processes: int = Field(default=64, gt=1)
    max_prediction_mb: int = Field(default=16, gt=0, description="cap on each predictions file")

    def gradient_steps(self, n_train: int) -> int:
        """The budget's schedule in gradient computations: epochs of batches of ``batch_size``."""
        return self.epochs * -(-n_train // self.batch_size)


class GateSpec(_Strict):
    """The gate's design for this benchmark, as spec.toml's [gate] writes it. The design itself is
    one type, ``autoresearch.gate.GateConfig``: its defaults and its rules are the ones used here
    (a spec is checked by building one), and ``design`` is the one place where a run's options
    are merged into it."""

    alpha: float = 0.05
    min_delta: float = 0.0
    stages: tuple[int, ...] = Field(default=(2, 4, 6, 10, 16), description="cumulative paired seeds at each look")
    futility: tuple[float, ...] = Field(default=(0.5, 0.2, 0.1, 0.05), description="per look but the last: "
                                        "reject when p is at least this")
    spending: Literal["quadratic", "pocock", "obrien-fleming"] = "quadratic"
    verify_seeds: int = Field(default=5, ge=2, description="fresh seeds of the end-of-run verification")

    @model_validator(mode="before")
    @classmethod
    def _drop_gate_v1_keys(cls, data):
        # Specs written for gate v1 (fixed seeds and bases, a win-rate rule, a separate val screen):
        # those keys mean nothing now (the screen is the first stage; seeds are drawn per run), and
        # refusing such specs would only break users' copies.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("gate_seed_base", "verify_seed_base", "seeds",
                                                               "min_win_rate", "screen", "screen_margin")}
        return data

    @model_validator(mode="after")
    def _a_valid_design(self):
        self.design(proposals=1)  # GateConfig's own checks; its ValueError reads as a spec error
        return self

    def design(self, *, proposals: int, alpha: float | None = None, min_delta: float | None = None,
               stages: tuple[int, ...] | None = None, seeds: int | None = None):
        """The run's gate: this design with the run's alpha, min_delta and stages (or a fixed number
        of seeds: one look) where given; m is the run's proposal budget."""
        from autoresearch.gate import GateConfig  # lazily: the gate module loads scipy

        looks = (seeds,) if seeds else tuple(stages or self.stages)
        # One futility level per look but the last: the spec's, cut or repeated to fit other stages.
        futility = tuple((list(self.futility) + [self.futility[-1] if self.futility else 0.05] * len(looks))
                         [:len(looks) - 1])
        return GateConfig(alpha=alpha or self.alpha, proposals=proposals, stages=looks, futility=futility,
                          spending=self.spending, min_delta=self.min_delta if min_delta is None else min_delta)


class SandboxSpec(_Strict):
    packages: list[str] = Field(default_factory=list, description="installed distributions the candidate may "
                                "import besides numpy and torch (their dependencies come along); nothing else of "
                                "the Python environment is visible in the sandbox")


class BenchmarkSpec(_Strict):
    name: str
    version: str
    description: str
    data: DataSpec
    metric: MetricSpec = MetricSpec()
    budget: BudgetSpec
    editable: list[str]
    harness: str | None = Field(default=None, description="a built-in frozen harness by name (a folder of "
                                "autoresearch/harnesses/); left out, the benchmark folder's own harness/ is used")
    gate: GateSpec = GateSpec()
    integrity: IntegritySpec = IntegritySpec()
    sandbox: SandboxSpec = SandboxSpec()

    @field_validator("editable")
    @classmethod
    def _relative_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if p.startswith("/") or ".." in Path(p).parts or not p:
                raise ValueError(f"editable paths must be relative and inside the repo: {p!r}")
        return v

    @field_validator("harness")
    @classmethod
    def _builtin_harness(cls, v: str | None) -> str | None:
        if v is not None and v not in builtin_harness_names():
            raise ValueError(f"unknown harness {v!r}: the built-in harnesses are {', '.join(builtin_harness_names())}; "
                             "leave the key out to use the benchmark folder's own harness/")
        return v


@dataclass(frozen=True)
class Benchmark:
    spec: BenchmarkSpec
    root: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def harness_dir(self) -> Path:
        """The frozen harness this benchmark runs: the built-in one its spec names, else its own harness/."""
        return builtin_harness_dir() / self.spec.harness if self.spec.harness else self.root / "harness"

    @property
    def repo_dir(self) -> Path:
        return self.root / "repo"

    def editable_files(self) -> list[Path]:
        return [self.repo_dir / p for p in self.spec.editable]

    def template_files(self) -> dict[str, bytes]:
        """Every file of the editable repo template, by relative path."""
        return {str(p.relative_to(self.repo_dir)): p.read_bytes()
                for p in sorted(self.repo_dir.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}

    def harness_files(self) -> dict[str, bytes]:
        """Every file of the frozen harness this benchmark runs, by relative path."""
        return {str(p.relative_to(self.harness_dir)): p.read_bytes() for p in sorted(self.harness_dir.rglob("*"))
                if p.is_file() and "__pycache__" not in p.relative_to(self.harness_dir).parts}

    def harness_hash(self) -> str:
        """The exact harness files used plus spec.toml: a change to either (a shared harness included) is a new key."""
        h = hashlib.sha256()
        for rel, data in self.harness_files().items():
            h.update(rel.encode() + b"\0" + data + b"\0")
        h.update((self.root / "spec.toml").read_bytes())
        return h.hexdigest()


def builtin_dir() -> Path:
    return Path(str(resources.files("autoresearch.baselines")))


def builtin_names() -> list[str]:
    return sorted(p.name for p in builtin_dir().iterdir() if (p / "spec.toml").is_file())


def catalogue() -> list[dict]:
    """The built-in benchmarks as `autoresearch benchmarks` lists them: spec, frozen harness,
    editable files, where the data comes from and whether its fingerprints are pinned."""
    items = []
    for name in builtin_names():
        b = load_benchmark(name)
        d = b.spec.data
        hub = d.source == "hf-datasets" and not Path(str(d.options.get("path", ""))).expanduser().is_dir()
        data = {"source": d.source, "dataset": d.options.get("path"), "revision": d.options.get("revision"),
                "needs_hub": hub, "pinned": not unpinned_splits(b.spec), "sizes": d.sizes}
        items.append({"name": b.name, "version": b.spec.version, "description": b.spec.description,
                      "root": str(b.root), "harness": str(b.harness_dir),
                      "editable": [str(p.resolve()) for p in b.editable_files()],
                      "metric": b.spec.metric.name, "direction": b.spec.metric.direction, "data": data})
    return items


def builtin_harness_dir() -> Path:
    return Path(str(resources.files("autoresearch") / "harnesses"))


def builtin_harness_names() -> list[str]:
    return sorted(p.name for p in builtin_harness_dir().iterdir()
                  if (p / "run_train.py").is_file() and (p / "run_predict.py").is_file())


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    candidate = Path(name_or_path)
    if (candidate / "spec.toml").is_file():
        root = candidate.resolve()
    elif (builtin_dir() / str(name_or_path) / "spec.toml").is_file():
        root = builtin_dir() / str(name_or_path)
    else:
        raise BenchmarkError(f"unknown benchmark {str(name_or_path)!r}: not a folder with spec.toml and not one of "
                             f"the built-in benchmarks ({', '.join(builtin_names())})")
    try:
        raw = tomllib.loads((root / "spec.toml").read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"{root / 'spec.toml'}: not valid TOML: {exc}") from None
    try:
        spec = BenchmarkSpec.model_validate(raw)
    except ValidationError as exc:
        raise BenchmarkError(f"{root / 'spec.toml'}: invalid spec:\n{exc}") from None
    own_harness = root / "harness"
    if spec.harness is not None and own_harness.exists():
        raise BenchmarkError(f"{root}: spec.toml names the built-in harness {spec.harness!r} and the folder has its "
                             "own harness/ too; keep one (remove the key to run harness/, or the folder to run the "
                             "built-in one)")
    if spec.harness is None and not own_harness.is_dir():
        raise BenchmarkError(f"{root}: missing folder harness/ (or name a built-in harness in spec.toml: "
                             f"harness = one of {', '.join(repr(n) for n in builtin_harness_names())})")
    if not (root / "repo").is_dir():
        raise BenchmarkError(f"{root}: missing folder repo/")
    for p in spec.editable:
        if not (root / "repo" / p).is_file():
            raise BenchmarkError(f"{root}: editable file {p} is not in repo/")
    return Benchmark(spec=spec, root=root)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PreparedData:
    """Where a run's splits live, and what they are."""

    public_dir: Path  # train/ (inputs+labels) and predict/ (the mixed predict set, no labels): visible to sandboxes
    labels_dir: Path  # val/test labels and the predict set's layout: trusted side only
    fingerprints: dict[str, str]
    counts: dict[str, int]
    predict_fingerprint: str = ""  # of the predict set (secret order, perturbed copies included)

    @property
    def train_dir(self) -> Path:
        return self.public_dir / "train"

    @property
    def predict_dir(self) -> Path:
        return self.public_dir / "predict"

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.labels_dir / f"{split}_y.npy", allow_pickle=False)

    def layout(self) -> PredictLayout:
        def rows(name: str) -> np.ndarray:
            return np.load(self.labels_dir / f"{name}_rows.npy", allow_pickle=False)

        return PredictLayout(val_rows=rows("val"), test_rows=rows("test"), perturbed_rows=rows("perturbed"),
                             check_rows=rows("check"))


def materialise_splits(spec: BenchmarkSpec) -> dict[str, Split]:
    pool = load_pool(spec.data.source, spec.data.options)
    if isinstance(pool, dict):  # a source with its own splits (a hub dataset's train/test): options.splits maps them
        return assign_source_splits(pool, dict(spec.data.options.get("splits", {})), seed=spec.data.split_seed,
                                    sizes=spec.data.sizes)
    x, y = pool
    return permutation_split(x, y, seed=spec.data.split_seed, sizes=spec.data.sizes)


def unpinned_splits(spec: BenchmarkSpec) -> list[str]:
    """The spec's splits that have no pinned sha256 fingerprint."""
    return sorted(k for k in spec.data.sizes if not is_pinned(spec.data.fingerprints.get(k, "")))


def require_pins(spec: BenchmarkSpec) -> None:
    """Refuse, before any download, a spec whose fingerprints are not all pinned sha256 digests."""
    unpinned = unpinned_splits(spec)
    if unpinned:
        raise DataMismatch(
            f"benchmark {spec.name}: split(s) {unpinned} have no pinned fingerprint in spec.toml, so there is nothing "
            "to check the data against; refusing to run. Pin them once on a machine that has the data: "
            f"`autoresearch init-benchmark DEST --from {spec.name} [--revision SHA]` writes a copy with computed pins.")


def check_fingerprints(spec: BenchmarkSpec, splits: dict[str, Split]) -> dict[str, str]:
    got = {name: fingerprint_split(s) for name, s in splits.items()}
    for name, want in spec.data.fingerprints.items():
        if got.get(name) != want:
            raise DataMismatch(
                f"benchmark {spec.name}: split {name!r} has fingerprint {got.get(name)} but the spec pins {want}. "
                "The data on this machine is not the data the benchmark was defined on; refusing to compare.")
    missing = set(splits) - set(spec.data.fingerprints)
    if missing:
        raise DataMismatch(f"benchmark {spec.name}: no pinned fingerprint for split(s) {sorted(missing)}")
    return got


SMOKE_TRAIN = 256  # train examples of a smoke run
SMOKE_PREDICT = 64  # predict inputs of a smoke run


def prepare_data(bench: Benchmark, dest: Path, secret: str) -> PreparedData:
    """Materialise the splits under dest, refusing data whose fingerprints differ from the spec's pins.

    Sandboxes may read ``public/``: the train split (inputs and labels) and the predict set (val
    and test inputs mixed with perturbed copies, in an order drawn from the run's ``secret``).
    ``labels/`` (val/test labels, the predict set's layout) stays on the trusted side."""
    require_pins(bench.spec)
    splits = materialise_splits(bench.spec)
    fingerprints = check_fingerprints(bench.spec, splits)
    public, labels = dest / "public", dest / "labels"
    (public / "train").mkdir(parents=True, exist_ok=True)
    (public / "predict").mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    np.save(public / "train" / "train_x.npy", splits["train"].x, allow_pickle=False)
    np.save(public / "train" / "train_y.npy", splits["train"].y, allow_pickle=False)
    inputs, layout = build_predict_set(splits, secret, bench.spec.integrity)
    np.save(public / "predict" / "inputs.npy", inputs, allow_pickle=False)
    # A smoke run (a candidate's first steps, before any gate trial) trains on a slice of the train
    # split and predicts a few inputs: enough to show a traceback or a NaN, in seconds.
    (public / "smoke" / "train").mkdir(parents=True, exist_ok=True)
    (public / "smoke" / "predict").mkdir(parents=True, exist_ok=True)
    np.save(public / "smoke" / "train" / "train_x.npy", splits["train"].x[:SMOKE_TRAIN], allow_pickle=False)
    np.save(public / "smoke" / "train" / "train_y.npy", splits["train"].y[:SMOKE_TRAIN], allow_pickle=False)
    np.save(public / "smoke" / "predict" / "inputs.npy", inputs[:SMOKE_PREDICT], allow_pickle=False)
    for name in ("val", "test"):
        np.save(labels / f"{name}_y.npy", splits[name].y, allow_pickle=False)
    for name, rows in (("val", layout.val_rows), ("test", layout.test_rows), ("perturbed", layout.perturbed_rows),
                       ("check", layout.check_rows)):
        np.save(labels / f"{name}_rows.npy", rows, allow_pickle=False)
    return PreparedData(public_dir=public, labels_dir=labels, fingerprints=fingerprints,
                        counts={k: len(v) for k, v in splits.items()}, predict_fingerprint=fingerprint_arrays(inputs))
