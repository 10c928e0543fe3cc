"""One copy of the frozen harness: the built-in benchmarks run autoresearch's shared
`torch-classifier` harness, named by their spec; a folder with its own harness/ runs that one;
init-benchmark's copies carry their own harness/, so an upgrade never changes them."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

import pytest

from autoresearch import benchmark
from autoresearch.benchmark import (BenchmarkError, builtin_dir, builtin_harness_dir, builtin_harness_names,
                                    builtin_names, load_benchmark)
from autoresearch.scaffold import init_benchmark
from conftest import REPO_ROOT

SHARED = "torch-classifier"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.relative_to(folder).parts}


def _expected_hash(harness: Path, spec: Path) -> str:
    h = hashlib.sha256()
    for rel, data in _files(harness).items():
        h.update(rel.encode() + b"\0" + data + b"\0")
    h.update(spec.read_bytes())
    return h.hexdigest()


def _shared_copy(tmp_path: Path, monkeypatch) -> Path:
    """The built-in harnesses, copied to tmp_path and put in the package's place (an 'upgrade')."""
    fake = tmp_path / "harnesses"
    shutil.copytree(builtin_harness_dir(), fake, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(benchmark, "builtin_harness_dir", lambda: fake)
    return fake


def test_every_builtin_benchmark_runs_the_one_shared_harness():
    assert SHARED in builtin_harness_names()
    shared = builtin_harness_dir() / SHARED
    assert sorted(_files(shared)) == ["compute_meter.py", "run_predict.py", "run_train.py", "runtime.py"]
    assert all("FROZEN (DO NOT CHANGE)" in (shared / f).read_text() for f in ("run_train.py", "run_predict.py", "runtime.py",
                                                                          "compute_meter.py"))
    for name in builtin_names():
        bench = load_benchmark(name)
        assert bench.spec.harness == SHARED, name
        assert bench.harness_dir == shared, name
        assert bench.harness_files() == _files(shared)
        assert bench.harness_hash() == _expected_hash(shared, bench.root / "spec.toml")
    # One copy in the source tree: no benchmark folder carries a harness of its own any more.
    assert not [p for p in (REPO_ROOT / "baselines").glob("*/harness") if p.exists()]
    assert not [p for p in builtin_dir().glob("*/harness") if p.exists()]


def test_a_change_to_the_shared_harness_changes_every_benchmarks_hash(tmp_path, monkeypatch):
    before = {name: load_benchmark(name).harness_hash() for name in builtin_names()}
    fake = _shared_copy(tmp_path, monkeypatch)
    assert {name: load_benchmark(name).harness_hash() for name in builtin_names()} == before  # same bytes, same hash
    with open(fake / SHARED / "run_predict.py", "a") as f:
        f.write("# one more line\n")
    after = {name: load_benchmark(name).harness_hash() for name in builtin_names()}
    assert all(after[name] != before[name] for name in before)
    assert len(set(after.values())) == len(after)  # spec.toml stays in the hash: still one key per benchmark


def _user_bench(tmp_path: Path, template: str = "mnist5k-cnn") -> Path:
    dest = tmp_path / "bench"
    shutil.copytree(builtin_dir() / template, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _set_harness_line(bench: Path, line: str) -> None:
    spec = bench / "spec.toml"
    text = spec.read_text()
    old = next(ln for ln in text.splitlines() if ln.startswith("harness = "))
    spec.write_text(text.replace(old + "\n", line))


def test_unknown_harness_name_is_a_clear_error(tmp_path):
    bench = _user_bench(tmp_path)
    _set_harness_line(bench, 'harness = "no-such-harness"\n')
    with pytest.raises(BenchmarkError, match="unknown harness 'no-such-harness'") as err:
        load_benchmark(bench)
    assert SHARED in str(err.value)  # names the ones that exist


@pytest.mark.parametrize("bad", ["../mnist5k-cnn", ".", "", "torch-classifier/run_train.py"])
def test_harness_name_cannot_reach_elsewhere(tmp_path, bad):
    bench = _user_bench(tmp_path)
    _set_harness_line(bench, f'harness = "{bad}"\n')
    with pytest.raises(BenchmarkError, match="unknown harness"):
        load_benchmark(bench)


def test_no_harness_at_all_is_a_clear_error(tmp_path):
    bench = _user_bench(tmp_path)
    _set_harness_line(bench, "")
    with pytest.raises(BenchmarkError, match=r"missing folder harness/.*torch-classifier"):
        load_benchmark(bench)


def test_a_named_harness_and_an_own_harness_folder_is_an_error(tmp_path):
    bench = _user_bench(tmp_path)
    shutil.copytree(builtin_harness_dir() / SHARED, bench / "harness")
    with pytest.raises(BenchmarkError, match="keep one"):
        load_benchmark(bench)


def test_a_folder_with_its_own_harness_runs_it(tmp_path):
    bench = _user_bench(tmp_path)
    _set_harness_line(bench, "")
    shutil.copytree(builtin_harness_dir() / SHARED, bench / "harness")
    loaded = load_benchmark(bench)
    assert loaded.spec.harness is None and loaded.harness_dir == bench / "harness"
    assert loaded.harness_hash() == _expected_hash(bench / "harness", bench / "spec.toml")
    before = loaded.harness_hash()
    with open(bench / "harness" / "run_train.py", "a") as f:
        f.write("# edited by the benchmark's author\n")
    assert load_benchmark(bench).harness_hash() != before


@pytest.mark.parametrize("template", ["digits-mlp", "mnist5k-cnn"])
def test_init_benchmark_copy_is_self_contained(tmp_path, monkeypatch, template):
    src = load_benchmark(template)
    dest = tmp_path / "mine"
    init_benchmark(dest, template)
    spec = tomllib.loads((dest / "spec.toml").read_text())
    assert "harness" not in spec  # the copy runs its own harness/
    copy = load_benchmark(dest)
    assert copy.spec.harness is None and copy.harness_dir == dest / "harness"
    assert copy.harness_files() == src.harness_files() == _files(builtin_harness_dir() / SHARED)
    assert copy.harness_hash() == _expected_hash(dest / "harness", dest / "spec.toml")
    assert copy.template_files() == src.template_files()
    template_spec = tomllib.loads((src.root / "spec.toml").read_text())
    assert {k: v for k, v in spec.items() if k not in ("name", "data")} == \
        {k: v for k, v in template_spec.items() if k not in ("name", "data", "harness")}
    # An upgrade of autoresearch (a changed shared harness) changes the template, not the user's copy.
    pinned_hash, template_hash = copy.harness_hash(), src.harness_hash()
    fake = _shared_copy(tmp_path, monkeypatch)
    (fake / SHARED / "run_train.py").write_text("raise SystemExit('a newer harness')\n")
    assert load_benchmark(dest).harness_hash() == pinned_hash
    assert load_benchmark(template).harness_hash() != template_hash
    # A copy of the copy keeps its harness/ as it is.
    again = tmp_path / "again"
    init_benchmark(again, str(dest))
    assert load_benchmark(again).harness_files() == copy.harness_files()
