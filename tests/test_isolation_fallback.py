"""`isolation: none`, only when asked for: a process group, rlimits and (where writable) cgroups;
reports say `none`."""

import sys
import time

import pytest

from autoresearch.sandbox import isolation
from autoresearch.sandbox.cgroups import create_cgroup
from autoresearch.sandbox.isolation import IsolationUnavailable, Limits, Mount, run_sandboxed


def test_no_fallback_when_bubblewrap_is_unusable(monkeypatch):
    monkeypatch.setattr(isolation, "bubblewrap_works", lambda: False)
    monkeypatch.setattr(isolation, "user_namespace_problem", lambda: None)
    with pytest.raises(IsolationUnavailable, match="bubblewrap.*--isolation none"):
        isolation.isolation_level()
    assert isolation.isolation_level("none") == "none"  # only when the user says so


def test_fallback_runs_with_host_paths_and_cleared_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    out = tmp_path / "out"
    out.mkdir()
    res = run_sandboxed([sys.executable, "-I", "-c",
                         "import os; open('/sandbox/out/x'.replace('/sandbox/out', os.environ['OUT']), 'w').write('1');"
                         "print('KEYS', [k for k in os.environ if 'OPENAI' in k])"],
                        mounts=[Mount(host=out, inside="/sandbox/out", writable=True)], limits=Limits(wall_seconds=20),
                        isolation="none", env={"OUT": "/sandbox/out"})
    assert res.exit_code == 0, res.log_excerpt
    assert (out / "x").read_text() == "1" and "KEYS []" in res.log_excerpt and res.isolation == "none"


def test_fallback_timeout_kills_detached_children(tmp_path):
    marker = tmp_path / "alive"
    child = tmp_path / "child.py"
    child.write_text(f"import os, time\nos.setsid()\nwhile True:\n    open({str(marker)!r}, 'a').write('x')\n"
                     "    time.sleep(0.1)\n")
    parent = tmp_path / "parent.py"
    parent.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(60)\n")
    res = run_sandboxed([sys.executable, str(parent)], mounts=[], limits=Limits(wall_seconds=3), isolation="none")
    assert res.timed_out, res.log_excerpt
    time.sleep(0.5)
    size = marker.stat().st_size if marker.exists() else 0
    assert size > 0, "the detached child never ran"
    time.sleep(1.0)
    probe = create_cgroup(2**30, 8)
    probe.remove()
    if not probe.active:
        pytest.skip("no cgroups here: a setsid child can outlive the trial without bubblewrap (documented)")
    assert marker.stat().st_size == size, "a detached process outlived the trial"
