"""The Python view's allow-list (sandbox/pyview.py), without running a sandbox (except the /tmp venv)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from autoresearch.sandbox import pyview
from autoresearch.sandbox.isolation import Limits, build_command, bubblewrap_works


def test_default_view_shows_torch_and_numpy_and_nothing_with_data():
    view = pyview.python_view(pyview.DEFAULT_PACKAGES)
    names = {d.split()[0].lower() for d in view.distributions}
    assert {"torch", "numpy", "filelock", "sympy"} <= names  # torch's requirements come along
    shown = " ".join(view.sources)
    for absent in ("mlxtend", "sklearn", "scikit_learn", "/datasets", "autoresearch", "__editable__", "pandas",
                   "huggingface", "/usr/share", "dist-packages", "/home"):
        assert absent not in shown, absent
    assert not any(s in ("/usr", "/lib", "/", sys.prefix) for s in view.sources)
    site_dirs = [d for d in view.args if d.endswith(("site-packages", "dist-packages"))]
    assert site_dirs, "the site folders are rebuilt as empty tmpfs holding only the allowed entries"


def test_the_base_installation_site_packages_is_shown_empty():
    view = pyview.python_view(())
    stdlib = sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})
    assert stdlib in view.sources
    base_site = os.path.join(stdlib, "site-packages")
    if not os.path.isdir(base_site) or base_site in pyview.site.getsitepackages():
        pytest.skip("this interpreter's stdlib has no separate site-packages")
    args = list(view.args)
    i = args.index(base_site)
    assert args[i - 1] == "--tmpfs" and args[i + 1:i + 3] == ["--remount-ro", base_site]


def test_requirement_markers_and_extras():
    assert pyview._parse_requirement('ray[tune,Data]>=2; python_version >= "3"') == \
        ("ray", ("data", "tune"), 'python_version >= "3"')
    assert pyview._parse_requirement("typing-extensions>=4.10.0") == ("typing-extensions", (), None)
    assert not pyview._marker_holds('extra == "optree"', ())
    assert pyview._marker_holds('extra == "optree"', ("optree",))
    assert not pyview._marker_holds('python_version < "3"', ())
    assert pyview._marker_holds('sys_platform == "linux" or sys_platform != "linux"', ())


def test_without_packaging_extras_are_still_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "packaging.markers", None)  # import fails
    assert not pyview._marker_holds('extra == "dev"', ())
    assert pyview._marker_holds('extra == "dev"', ("dev",))
    assert pyview._marker_holds('python_version < "3"', ())  # kept: no evaluator


def _fake_dist(site: Path, name: str, files: list[str], requires: list[str] = ()) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" +
                                   "".join(f"Requires-Dist: {r}\n" for r in requires))
    for f in files:
        (site / f).parent.mkdir(parents=True, exist_ok=True)
        (site / f).write_text("x")
    record = [f"{f},," for f in files] + [f"{name}-1.0.dist-info/METADATA,,", f"{name}-1.0.dist-info/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


def test_closure_and_shared_namespace_folders(tmp_path):
    site = tmp_path / "site-packages"
    _fake_dist(site, "allowed", ["allowed/__init__.py", "nsp/allowed_part/__init__.py", "allowed.pth"],
               ["helper", 'optional; extra == "x"', "notinstalled"])
    _fake_dist(site, "helper", ["helper.py"])
    _fake_dist(site, "optional", ["optional/__init__.py"])
    _fake_dist(site, "labelled", ["labelled/data/test.csv", "nsp/labelled_part/data.csv", "labelled.pth"])
    shown, roots = pyview._allowed_entries(("allowed",), (str(site),))
    assert sorted(s.split()[0] for s in shown) == ["allowed", "helper"]
    rel = sorted(os.path.relpath(r, site) for r in roots)
    assert rel == ["allowed", "allowed-1.0.dist-info", "allowed.pth", "helper-1.0.dist-info", "helper.py",
                   "nsp/allowed_part"]
    with pytest.raises(pyview.PackageNotInstalled, match="nothere"):
        pyview._allowed_entries(("allowed", "nothere"), (str(site),))


def test_tmp_comes_before_the_view_and_parents_are_searchable():
    cmd, _, _ = build_command(["python"], [], isolation="bubblewrap", limits=Limits(), env={}, cwd="/tmp")
    assert cmd.index("/tmp") < cmd.index("--ro-bind")  # a venv under /tmp must not be hidden by the tmpfs
    dirs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--dir"]
    assert dirs and all(cmd[cmd.index(d) - 3:cmd.index(d) - 1] == ["--perms", "0755"] for d in dirs)
    assert "/tmp" not in dirs and "/" not in dirs


@pytest.mark.skipif(not bubblewrap_works(), reason="bubblewrap is not usable on this machine")
def test_a_venv_under_tmp_runs_in_its_own_view(tmp_path):
    """A CI clone's venv lives under /tmp, which the sandbox mounts a tmpfs on: the view must still
    show it (the tmpfs comes first). The venv has only the standard library and autoresearch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    here = Path(pyview.site.getsitepackages()[0])
    for f in here.glob("__editable__*autoresearch*"):  # make autoresearch importable there, as installed here
        shutil.copy(f, site / f.name)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""
        import sys
        from autoresearch.sandbox.isolation import Limits, run_sandboxed
        res = run_sandboxed([sys.executable, "-I", "-c", "import sys, json; print('PREFIX', sys.prefix)"], mounts=[],
                            limits=Limits(wall_seconds=60), isolation="bubblewrap", packages=())
        print(res.exit_code, res.log_excerpt)
    """))
    out = subprocess.run([str(venv / "bin" / "python"), str(driver)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("0 ") and f"PREFIX {venv}" in out.stdout, out.stdout + out.stderr[-2000:]
