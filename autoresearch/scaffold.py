"""`autoresearch init-benchmark`: a user's benchmark folder scaffolded from a template, with the
fingerprints of its splits computed on this machine and pinned in its spec.

The copy is self-contained: a template that runs a built-in harness gets that harness's files
copied into DEST/harness/ and its `harness` key dropped, so that upgrading autoresearch never
changes the frozen code of a user's benchmark behind their back."""

from __future__ import annotations

import re
import shutil
import time
import tomllib
from pathlib import Path

from autoresearch.benchmark import BenchmarkError, BenchmarkSpec, check_fingerprints, load_benchmark, materialise_splits
from autoresearch.datasets import fingerprint_split


def _section_bounds(text: str, header: str) -> tuple[int, int]:
    start = text.index(f"[{header}]")
    nxt = re.search(r"^\[", text[start + len(header) + 2:], flags=re.M)
    end = start + len(header) + 2 + nxt.start() if nxt else len(text)
    return start, end


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
    """Replace the top-level `harness = ...` line with a note: the copy runs its own harness/ now."""
    text = spec_path.read_text()
    want = tomllib.loads(text)
    want.pop("harness", None)
    note = f"# harness/ is a frozen copy of autoresearch's built-in {name} harness, made by init-benchmark"
    for line in re.finditer(r"^harness\s*=.*$", text, flags=re.M):  # the one whose removal leaves the rest as is
        edited = text[:line.start()] + note + text[line.end():]
        try:
            if tomllib.loads(edited) == want:
                spec_path.write_text(edited)
                return
        except tomllib.TOMLDecodeError:
            continue
    raise BenchmarkError(f"{spec_path}: could not drop the top-level `harness = ...` line of the copy")


def _pin(template: str, dest: Path, revision: str | None) -> dict[str, str]:
    spec_path = dest / "spec.toml"
    text = spec_path.read_text()
    text = re.sub(r'^name = ".*"$', f'name = "{dest.name}"', text, count=1, flags=re.M)
    if revision is not None:
        if not re.search(r'^revision = ".*"$', text, flags=re.M):
            raise BenchmarkError(f"template {template} has no dataset revision to pin")
        text = re.sub(r'^revision = ".*"$', f'revision = "{revision}"', text, count=1, flags=re.M)
    spec = BenchmarkSpec.model_validate(tomllib.loads(text))
    fingerprints = {name: fingerprint_split(split) for name, split in materialise_splits(spec).items()}
    start, end = _section_bounds(text, "data.fingerprints")
    pinned = "\n".join(f'{k} = "{v}"' for k, v in fingerprints.items())
    text = (text[:start] + f"[data.fingerprints]\n# computed by `autoresearch init-benchmark` from {template} on "
            f"{time.strftime('%Y-%m-%d')}\n{pinned}\n\n" + text[end:])
    spec_path.write_text(text)
    bench = load_benchmark(dest)
    check_fingerprints(bench.spec, materialise_splits(bench.spec))  # the written pins load and match
    return fingerprints
