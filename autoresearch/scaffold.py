"""`autoresearch init-benchmark`: a user's benchmark folder scaffolded from a template, with the
fingerprints of its splits computed on this machine and pinned in its spec.

The copy is self-contained: a template that runs a built-in harness gets that harness's files
copied into DEST/harness/ and its `harness` key dropped, so that upgrading autoresearch never
changes the frozen code of a user's benchmark behind their back."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import tomlkit

from autoresearch.benchmark import BenchmarkError, BenchmarkSpec, check_fingerprints, load_benchmark, materialise_splits
from autoresearch.datasets import fingerprint_split


def init_benchmark(dest: Path, template: str = "digits-mlp", *, revision: str | None = None) -> dict[str, str]:
    """Copy ``template`` (a built-in name or a folder) to ``dest``, pin ``revision`` if given,
    compute each split's sha256 and write them into dest/spec.toml. Returns the fingerprints."""
    src = load_benchmark(template)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BenchmarkError(f"{dest} exists and is not empty; choose a new folder")
    if revision is not None and not re.fullmatch(r"[0-9a-f]{40}", revision):
        raise BenchmarkError(f"--revision must be a full 40-hex commit sha, got {revision!r}")
    created = not dest.exists()
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(src.root, dest, ignore=ignore, dirs_exist_ok=True)
    try:
        if src.spec.harness is not None:
            shutil.copytree(src.harness_dir, dest / "harness", ignore=ignore)
            _drop_harness_key(dest / "spec.toml", src.spec.harness)
        return _pin(src.name, dest, revision)
    except BaseException:
        if created:  # leave no half-made benchmark behind
            shutil.rmtree(dest, ignore_errors=True)
        raise


def _drop_harness_key(spec_path: Path, name: str) -> None:
    """Drop the top-level `harness = ...` key (comments and layout kept): the copy runs its own harness/."""
    doc = tomlkit.parse(spec_path.read_text())
    doc.remove("harness")
    note = f"# harness/ is a frozen copy of autoresearch's built-in {name} harness, made by init-benchmark\n"
    spec_path.write_text(note + tomlkit.dumps(doc))


def _pin(template: str, dest: Path, revision: str | None) -> dict[str, str]:
    spec_path = dest / "spec.toml"
    doc = tomlkit.parse(spec_path.read_text())
    doc["name"] = dest.name
    if revision is not None:
        options = doc["data"].get("options", doc["data"])
        if "revision" not in options:
            raise BenchmarkError(f"template {template} has no dataset revision to pin")
        options["revision"] = revision
    spec = BenchmarkSpec.model_validate(doc.unwrap())
    fingerprints = {name: fingerprint_split(split) for name, split in materialise_splits(spec).items()}
    pinned = tomlkit.table()
    pinned.add(tomlkit.comment(f"computed by `autoresearch init-benchmark` from {template} on "
                               f"{time.strftime('%Y-%m-%d')}"))
    for split, digest in fingerprints.items():
        pinned.add(split, digest)
    doc["data"]["fingerprints"] = pinned
    spec_path.write_text(tomlkit.dumps(doc))
    bench = load_benchmark(dest)
    check_fingerprints(bench.spec, materialise_splits(bench.spec))  # the written pins load and match
    return fingerprints
