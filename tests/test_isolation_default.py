"""Isolated by default: without a working bubblewrap, `run`, `resume` and `replay --verify` refuse
(exit 5) and say how to fix it; `--isolation none` runs, and every record says so; `doctor` says
what is missing; setup installs bubblewrap where it can; runs recorded with the old
`require_isolation` key still open."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from autoresearch.cli import EXIT_ISOLATION, main
from autoresearch.config import RunConfig
from autoresearch.sandbox import cgroups, isolation
from conftest import REPO_ROOT

INVALID = "{this is not json\n"


def cli(*args) -> tuple[int, str]:
    """The command in this process (so monkeypatches hold); exit code and stdout + stderr, unwrapped."""
    result = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join((result.stdout + result.stderr).split())


def no_bubblewrap(mp: pytest.MonkeyPatch) -> None:
    """A machine where bwrap is not installed."""
    mp.setattr(isolation, "bubblewrap_path", lambda: None)


@pytest.fixture(scope="module")
def none_run(tmp_path_factory, fast_bench) -> Path:
    """A finished run made with --isolation none on a machine without bubblewrap (baseline trained,
    one invalid proposal: the cheapest run that still trains). Its trials are canned
    (tests/fake_executor.py): what is checked is what the records say, not the trials."""
    from fake_executor import FakeExecutor

    root = tmp_path_factory.mktemp("none-run")
    (root / "p.jsonl").write_text(INVALID)
    with pytest.MonkeyPatch.context() as mp:
        no_bubblewrap(mp)
        mp.setattr("autoresearch.sandbox.executors.run_trials", FakeExecutor().run)
        code, out = cli("run", "--isolation", "none", "--benchmark", fast_bench, "--proposals-file", root / "p.jsonl",
                        "--seeds", 2, "--no-verify", "--runs-dir", root / "runs")
    assert code == 0, out
    assert "isolation none: proposals run WITHOUT a sandbox" in out
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


def copy_run(run_dir: Path, dest: Path, **changes) -> Path:
    """A copy of a run whose recorded run config (and, with `row_isolation`, ledger row) is changed."""
    copy = dest / run_dir.name
    shutil.copytree(run_dir, copy)
    row_isolation = changes.pop("row_isolation", None)
    conn = sqlite3.connect(copy / "ledger.sqlite")
    with conn:
        (config_json,) = conn.execute("SELECT config_json FROM runs").fetchone()
        resolved = json.loads(config_json)
        for key, value in changes.items():
            if value is None:
                resolved["run"].pop(key, None)
            else:
                resolved["run"][key] = value
        conn.execute("UPDATE runs SET config_json = ?", (json.dumps(resolved),))
        if row_isolation:
            conn.execute("UPDATE runs SET isolation = ?", (row_isolation,))
    conn.close()
    (copy / "config.json").write_text(json.dumps(resolved))
    return copy


# --------------------------------------------------------------------------- refusing


def test_run_refuses_without_bubblewrap_and_trains_nothing(tmp_path, monkeypatch, fast_bench):
    (tmp_path / "p.jsonl").write_text(INVALID)
    bare = tmp_path / "bare-path"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bare))  # no bwrap (and no package manager) on this machine
    runs = tmp_path / "runs"
    code, out = cli("run", "--benchmark", fast_bench, "--proposals-file", tmp_path / "p.jsonl", "--runs-dir", runs)
    assert code == EXIT_ISOLATION == 5, out
    for needle in ("refusing to run proposals without a sandbox", "bubblewrap is not installed",
                   "install the bubblewrap package", "--isolation none"):
        assert needle in out, out
    assert not runs.exists() or not any(runs.iterdir())  # no run folder: nothing prepared, nothing trained
    # With an idea, the refusal comes before any LLM is reached (an unreachable one would be exit 6).
    code, out = cli("run", "--idea", "adaptive LR", "--llm-base-url", "http://127.0.0.1:9/v1", "--model", "m",
                    "--runs-dir", runs)
    assert code == 5 and "bubblewrap is not installed" in out, out
    # The old flag changes nothing: still a refusal.
    code, out = cli("run", "--require-isolation", "--proposals-file", tmp_path / "p.jsonl", "--runs-dir", runs)
    assert code == 5 and "deprecated" in out, out


def test_run_refuses_where_bubblewrap_cannot_make_a_sandbox(tmp_path, monkeypatch):
    (tmp_path / "p.jsonl").write_text(INVALID)
    monkeypatch.setattr(isolation, "bubblewrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(isolation, "bubblewrap_works", lambda: False)
    problem = "user namespaces are off (user.max_user_namespaces = 0); enable them: sudo sysctl -w x"
    monkeypatch.setattr(isolation, "user_namespace_problem", lambda: problem)
    code, out = cli("run", "--proposals-file", tmp_path / "p.jsonl", "--runs-dir", tmp_path / "runs")
    assert code == 5 and "bubblewrap (/usr/bin/bwrap) is installed but cannot make a sandbox here" in out, out
    assert problem in out and "--isolation none" in out


def test_require_isolation_is_a_hidden_deprecated_flag(tmp_path):
    (tmp_path / "p.jsonl").write_text(INVALID)
    code, out = cli("run", "--help")
    assert code == 0 and "--require-isolation" not in out and "--isolation [bubblewrap|none]" in out
    code, out = cli("run", "--require-isolation", "--isolation", "none", "--proposals-file", tmp_path / "p.jsonl")
    assert code == 2 and "contradict" in out


# --------------------------------------------------------------------------- --isolation none


def test_isolation_none_runs_and_every_record_says_so(none_run):
    unsandboxed = "isolation: **none** (no sandbox: candidate code ran with the user's rights)"
    assert unsandboxed in (none_run / "REPORT.md").read_text()
    reports = list((none_run / "reports").glob("*.md"))
    assert reports and all(unsandboxed in r.read_text() for r in reports)
    code, out = cli("show", none_run)
    assert code == 0 and "isolation none: proposals run WITHOUT a sandbox" in out, out
    result = CliRunner().invoke(main, ["show", str(none_run), "--json"])
    assert json.loads(result.stdout)["isolation"] == "none"


def test_resume_keeps_the_runs_choice_or_refuses(none_run, tmp_path, monkeypatch):
    no_bubblewrap(monkeypatch)
    # Started with --isolation none: that recorded choice holds on resume.
    code, out = cli("resume", copy_run(none_run, tmp_path / "a"))
    assert code == 0 and "WITHOUT a sandbox" in out, out
    # Started with the default: without bubblewrap, resume refuses unless told --isolation none ...
    default = copy_run(none_run, tmp_path / "b", isolation="bubblewrap")
    code, out = cli("resume", default)
    assert code == 5 and "bubblewrap is not installed" in out and "--isolation none" in out, out
    code, out = cli("resume", default, "--isolation", "none")
    assert code == 0 and "WITHOUT a sandbox" in out, out
    # ... and a run that really ran in the sandbox cannot go on without it.
    sandboxed = copy_run(none_run, tmp_path / "c", isolation="bubblewrap", row_isolation="bubblewrap")
    code, out = cli("resume", sandboxed, "--isolation", "none")
    assert code == 5 and "started in the bubblewrap sandbox" in out, out


def test_run_recorded_with_require_isolation_still_opens(none_run, tmp_path, monkeypatch):
    old = copy_run(none_run, tmp_path, isolation=None, require_isolation=False)
    assert "require_isolation" in json.loads((old / "config.json").read_text())["run"]
    code, out = cli("show", old)
    assert code == 0 and "isolation none" in out, out
    assert CliRunner().invoke(main, ["show", str(old), "--json"]).exit_code == 0
    code, out = cli("replay", old, "--onto", tmp_path / "replayed")
    assert code == 0 and "replayed 0 accepted commit(s)" in out, out
    no_bubblewrap(monkeypatch)
    code, out = cli("resume", old)  # the old key reads as the default: the sandbox, or refuse
    assert code == 5, out
    code, out = cli("resume", old, "--isolation", "none")
    assert code == 0, out


def test_config_maps_the_old_key_and_stays_strict():
    assert RunConfig().isolation == "bubblewrap"
    for old in (True, False):
        assert RunConfig.model_validate({"require_isolation": old}).isolation == "bubblewrap"
    assert RunConfig.model_validate({"require_isolation": False, "isolation": "none"}).isolation == "none"
    for bad in ({"require_isolation": "yes"}, {"isolation": "docker"}, {"isolate": "none"}):
        with pytest.raises(ValidationError):
            RunConfig.model_validate(bad)


# --------------------------------------------------------------------------- doctor


def test_doctor_says_what_is_missing_and_the_limits(tmp_path, monkeypatch):
    from test_cgroups import fake_v2

    no_bubblewrap(monkeypatch)
    fake_v2(tmp_path, monkeypatch, root_subtree="memory pids")
    code, out = cli("doctor")
    assert code == 0, out
    for needle in ("bubblewrap: NOT installed; install it:", "run: REFUSES to run proposals (exit 5)",
                   "--isolation none", f"cgroup v2: memory, pids usable (under {cgroups.CGROUP_ROOT})",
                   "limits of a CPU trial (digits-mlp budget): memory: cgroup v2 memory.max 3072 MiB; "
                   "processes: cgroup v2 pids.max 64"):
        assert needle in out, out


def test_doctor_without_cgroups(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "none")
    code, out = cli("doctor")
    assert code == 0 and "cgroups: no v1 memory/pids or v2 hierarchy" in out, out
    assert "limits of a GPU trial (digits-mlp budget): memory: NOT capped (GPU trial" in out
    if os.geteuid() == 0:
        assert "processes: NOT capped (running as root" in out


def test_user_namespace_switches(tmp_path, monkeypatch):
    for name, value in (("user/max_user_namespaces", "63000"), ("kernel/unprivileged_userns_clone", "0")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(value + "\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert isolation.user_namespace_problem(tmp_path) is None  # root is not an unprivileged user
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "kernel.unprivileged_userns_clone = 0" in isolation.user_namespace_problem(tmp_path)
    (tmp_path / "user/max_user_namespaces").write_text("0\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "user.max_user_namespaces = 0" in isolation.user_namespace_problem(tmp_path)


# --------------------------------------------------------------------------- setup installs bubblewrap


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def run_installer(tmp_path: Path, *, uid: int, tools: tuple[str, ...], fail: bool = False,
                  have_bwrap: bool = False) -> tuple[str, str]:
    """scripts/install_bubblewrap.sh on a fake machine: PATH holds only stubs (id, apt-get/dnf, bwrap)."""
    stubs = tmp_path / f"stubs-{uid}-{'-'.join(tools)}-{fail}-{have_bwrap}"
    stubs.mkdir()
    log = stubs / "log"
    _stub(stubs / "id", f"echo {uid}\n")
    install = "" if fail else f'if [[ " $* " == *" install "* ]]; then /bin/cp {stubs}/id {stubs}/bwrap; fi\n'
    for tool in tools:
        _stub(stubs / tool, f'echo "{tool} $*" >> {log}\n{install}' + ("exit 100\n" if fail else "exit 0\n"))
    if have_bwrap:
        _stub(stubs / "bwrap", "exit 0\n")
    proc = subprocess.run(["/bin/bash", str(REPO_ROOT / "scripts" / "install_bubblewrap.sh")],
                          env={"PATH": str(stubs)}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr  # never fails the setup
    return proc.stdout, log.read_text() if log.exists() else ""


def test_setup_installs_bubblewrap_as_root_else_prints_the_command(tmp_path):
    out, log = run_installer(tmp_path, uid=0, tools=("apt-get",))
    assert log.splitlines() == ["apt-get update -qq", "apt-get install -y -qq bubblewrap"]
    assert "installed bubblewrap (apt-get)" in out
    out, log = run_installer(tmp_path, uid=0, tools=("dnf",))
    assert log.splitlines() == ["dnf install -y -q bubblewrap"] and "installed bubblewrap (dnf)" in out
    out, log = run_installer(tmp_path, uid=1000, tools=("apt-get",))
    assert log == "" and "Install it: sudo apt-get install bubblewrap" in out
    out, log = run_installer(tmp_path, uid=0, tools=("apt-get",), fail=True)
    assert "could not install bubblewrap with apt-get" in out and "sudo apt-get install bubblewrap" in out
    out, log = run_installer(tmp_path, uid=0, tools=("apt-get",), have_bwrap=True)
    assert log == "" and out == ""  # already there: nothing run, nothing said
    out, log = run_installer(tmp_path, uid=0, tools=())
    assert "install the bubblewrap package with your package manager" in out


def test_setup_runs_the_installer_first():
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert setup.index("bash scripts/install_bubblewrap.sh") < setup.index("pip install")
