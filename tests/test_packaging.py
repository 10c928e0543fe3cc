"""The built wheel installs under one namespace and runs `autoresearch --help` outside the repo."""

import json
import os
import subprocess
import sys
import zipfile
from importlib.util import find_spec

import pytest

from conftest import REPO_ROOT

OFFLINE_PIP = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")  # never the network


def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    """Offline: the wheel is built with this environment's setuptools (no build isolation, nothing
    downloaded) and installed without dependencies into a folder of its own, which comes first on
    the path (the editable install's finder comes after every path entry)."""
    missing = [m for m in ("setuptools", "pip") if find_spec(m) is None]
    if missing:
        pytest.skip(f"building the wheel offline needs {', '.join(missing)} in this environment")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO_ROOT)], check=True, cwd=tmp_path, timeout=600, env=OFFLINE_PIP)
    wheel = next(dist.glob("autoresearch_gate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"autoresearch"}, tops  # nothing named agent/, sandbox/ ... at the top of site-packages
    for needed in ["autoresearch/agent/proposal.py", "autoresearch/sandbox/isolation.py",
                   "autoresearch/baselines/digits-mlp/spec.toml", "autoresearch/baselines/digits-mlp/repo/optim.py",
                   "autoresearch/harnesses/torch-classifier/run_train.py",
                   "autoresearch/harnesses/torch-classifier/run_predict.py",
                   "autoresearch/harnesses/torch-classifier/runtime.py",
                   "autoresearch/harnesses/torch-classifier/compute_meter.py"]:
        assert needed in names, needed

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, timeout=600, env=OFFLINE_PIP)
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-m", "autoresearch.cli", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "autoresearch" in out.stdout and "run" in out.stdout and "replay" in out.stdout
    where = subprocess.run([sys.executable, "-c", "import autoresearch.agent.proposal as p, autoresearch; "
                            "print(p.__file__)"], capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert str(site) in where.stdout and str(REPO_ROOT) not in where.stdout, where.stdout + where.stderr
    # Every shipped spec that names a built-in harness finds its files in the installed package.
    shipped = subprocess.run([sys.executable, "-c", SHIPPED_HARNESSES], capture_output=True, text=True, cwd=tmp_path,
                             timeout=60, env=env)
    assert shipped.returncode == 0, shipped.stderr
    uses, both = json.loads(shipped.stdout)
    assert uses and all(files == ["compute_meter.py", "run_predict.py", "run_train.py", "runtime.py"] for files in uses.values()), uses
    # A spec that names a harness beside a harness/ folder refuses to load (setuptools reuses a stale
    # build/lib: after harness folders were removed from the source, `rm -rf build` before building).
    assert not both, f"the wheel ships harness/ folders beside a harness key: {both}"
    assert all(str(site) in where for where in uses), uses


SHIPPED_HARNESSES = """
import json, tomllib
from importlib import resources
pkg = resources.files("autoresearch")
uses, both = {}, []
for bench in (pkg / "baselines").iterdir():
    if bench.joinpath("spec.toml").is_file():
        name = tomllib.loads(bench.joinpath("spec.toml").read_text()).get("harness")
        if name:
            folder = pkg / "harnesses" / name
            uses[str(folder)] = sorted(p.name for p in folder.iterdir() if p.name.endswith(".py"))
            if bench.joinpath("harness").is_dir():
                both.append(bench.name)
print(json.dumps([uses, both]))
"""
