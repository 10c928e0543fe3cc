"""Candidate code runs as an unprivileged uid where the host allows (autoresearch run as root)."""

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from autoresearch.sandbox import isolation
from autoresearch.sandbox.isolation import (SANDBOX_UID, Limits, Mount, SandboxUnreadable, bubblewrap_works,
                                            run_sandboxed, unprivileged_uid)

needs_bwrap = pytest.mark.skipif(not bubblewrap_works(), reason="bubblewrap is not usable on this machine")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid switch applies when autoresearch runs as root")


def sandboxed(code: str, tmp: Path, *, mounts=(), pass_fds=()):
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    script = tmp / "snippet"
    script.mkdir(exist_ok=True)
    (script / "main.py").write_text(textwrap.dedent(code))
    return run_sandboxed([sys.executable, "-I", "/sandbox/code/main.py"],
                         mounts=[Mount(host=script, inside="/sandbox/code"), Mount(host=out, inside="/sandbox/out", writable=True),
                                 *mounts],
                         limits=Limits(wall_seconds=60), isolation="bubblewrap", cwd="/sandbox/code", pass_fds=pass_fds)


def results(res) -> dict:
    line = next((x for x in res.log_excerpt.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, res.log_excerpt
    return json.loads(line[len("RESULT "):])


PROBE = """
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
       "caps": status["CapEff"].strip(), "data": open("/sandbox/ro/data.txt").read()}
import torch, numpy  # the interpreter and its packages are readable
for path in ("/tmp/t", "/dev/shm/s", "/sandbox/out/o"):
    open(path, "w").write("w")
os.write(FD, b"through the fd")
try:
    os.setuid(0)
    out["setuid0"] = "worked"
except OSError:
    out["setuid0"] = "refused"
print("RESULT", json.dumps(out))
"""


@needs_bwrap
@as_root
def test_candidate_runs_as_nobody_and_still_reads_and_writes(tmp_path):
    if unprivileged_uid() is None:
        pytest.skip("this host does not let root map an unprivileged uid into a user namespace")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "data.txt").write_text("readable")
    results_file = tmp_path / "results.bin"
    fd = os.open(results_file, os.O_WRONLY | os.O_CREAT, 0o600)  # root's, mode 0600: the fd is what grants it
    try:
        res = sandboxed(PROBE.replace("FD", str(fd)), tmp_path, mounts=[Mount(host=ro, inside="/sandbox/ro")],
                        pass_fds=(fd,))
    finally:
        os.close(fd)
    got = results(res)
    assert got == {"uid": SANDBOX_UID, "euid": SANDBOX_UID, "gid": SANDBOX_UID, "groups": [],
                   "caps": "0000000000000000", "data": "readable", "setuid0": "refused"}, got
    assert results_file.read_bytes() == b"through the fd"
    out = tmp_path / "out" / "o"
    assert out.read_text() == "w" and out.stat().st_uid == SANDBOX_UID
    assert not any("ran as root" in n for n in res.notes), res.notes


@needs_bwrap
@as_root
def test_unreadable_mount_is_a_clear_error_before_anything_runs(tmp_path):
    if unprivileged_uid() is None:
        pytest.skip("this host does not let root map an unprivileged uid into a user namespace")
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text("x")
    os.chmod(private / "secret.txt", 0o600)
    with pytest.raises(SandboxUnreadable, match=r"secret\.txt.*-rw-------"):
        sandboxed("print('ran')", tmp_path, mounts=[Mount(host=private, inside="/sandbox/ro")])


@needs_bwrap
@as_root
def test_where_the_host_does_not_allow_it_the_sandbox_stays_root_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "unprivileged_uid", lambda: None)
    res = sandboxed("import os; print('RESULT', '{\"uid\": %d}' % os.getuid())", tmp_path)
    assert results(res) == {"uid": 0}
    assert any("ran as root" in n for n in res.notes), res.notes


@pytest.mark.parametrize("lister", ["find", "walk"])
def test_readability_check_follows_owner_group_and_other_bits(tmp_path, monkeypatch, lister):
    """The same answers from find(1)'s list of suspects and from the Python walk it falls back to."""
    if lister == "walk":
        monkeypatch.setattr(isolation, "_not_world_readable", lambda root: None)
    uid = 4242  # neither owner nor group of what root creates here: the "other" bits decide
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    os.chmod(tree, 0o755)
    os.chmod(tree / "sub", 0o755)
    os.chmod(tree / "sub" / "f", 0o644)
    assert isolation._unreadable(str(tree), uid) is None
    os.chmod(tree / "sub" / "f", 0o640)
    assert isolation._unreadable(str(tree), uid) == str(tree / "sub" / "f")
    if os.geteuid() == 0:
        os.chmod(tree / "sub" / "f", 0o000)
        os.chown(tree / "sub" / "f", uid, 0)  # a sandbox's own file: its trial answers for it, not the setup
        assert isolation._unreadable(str(tree), uid) is None
        os.chown(tree / "sub" / "f", 0, uid)  # its group: the group bits decide
        assert isolation._unreadable(str(tree), uid) == str(tree / "sub" / "f")
        os.chmod(tree / "sub" / "f", 0o040)
        assert isolation._unreadable(str(tree), uid) is None
    os.chmod(tree / "sub", 0o750)
    assert isolation._unreadable(str(tree), uid) == str(tree / "sub")
    assert stat.S_IMODE(os.stat(tree).st_mode) == 0o755
