"""The wheel and sdist built from this tree, and a clean virtualenv with the wheel installed,
cached by a hash of the files that go into the package (tests/package).

    with cached_build() as built:   built.wheel, built.sdist, built.venv (bin/python ...)

`python -m build --no-isolation` makes the sdist, then the wheel *from the sdist* (so a file
missing from the sdist breaks the wheel too). No build isolation, for the reason
scripts/install-deps.sh gives: the gRPC stubs must come from the grpcio-tools that matches the
grpcio installed. The virtualenv is made from the base interpreter, so nothing of the
development venv leaks into it, and gets the wheel with its dependencies from the index.

Cache: OVERLAY_WHEEL_CACHE (default /var/cache/overlay/wheels)/<hash>/. Building takes about
half a minute here, reusing it a second. An entry is built under an exclusive lock and used
under a shared one; old entries (beyond the newest KEEP) are removed when nobody uses them.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TREE = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("OVERLAY_WHEEL_CACHE", "/var/cache/overlay/wheels"))
PACKAGE_INPUTS = ["pyproject.toml", "setup.py", "MANIFEST.in", "LICENSE", "README.md", "overlay",
                  "plugins/ovs", "proto", "scripts/install-deps.sh"]
BUILD_TOOLS = ("setuptools", "grpcio-tools", "build", "wheel")
KEEP = 3


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def tree_hash() -> str:
    """Every file that goes into the package (tracked or new, not ignored: not the generated
    stubs, which the build makes), the Python and the build tools' versions."""
    files = subprocess.run(["git", "-C", str(TREE), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard", "--", *PACKAGE_INPUTS],
                           capture_output=True, check=True, timeout=60).stdout.split(b"\0")
    digest = hashlib.sha256(sys.version.encode())
    for tool in BUILD_TOOLS:
        digest.update(f"{tool}={importlib.metadata.version(tool)}".encode())
    for name in sorted(f for f in files if f):
        path = TREE / name.decode()
        if path.is_file():
            digest.update(name + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], log: Path, cwd: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def _build(entry: Path) -> None:
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True)
    log = entry / "build.log"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(entry / "dist"),
          str(TREE)], log, TREE)
    wheel = next((entry / "dist").glob("*.whl"))
    # sys.executable is the development venv's Python; its venv module makes the new venv
    # from the base interpreter, without the development venv's packages.
    _run([sys.executable, "-m", "venv", str(entry / "venv")], log, entry)
    _run([str(entry / "venv/bin/pip"), "install", "-q", str(wheel)], log, entry)
    (entry / "done").touch()


def _prune(keep: str) -> None:
    entries = sorted((p for p in CACHE.iterdir() if p.is_dir() and p.name != keep),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP - 1:]:
        with open(CACHE / f"{old.name}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by another test run
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def cached_build() -> Iterator[Built]:
    key = tree_hash()
    CACHE.mkdir(parents=True, exist_ok=True)
    entry = CACHE / key
    with open(CACHE / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / "done").exists():
            _build(entry)
        os.utime(entry)  # most recently used: the last to be pruned
        fcntl.flock(lock, fcntl.LOCK_SH)  # others may use it too; nobody removes it
        _prune(key)
        yield Built(wheel=next((entry / "dist").glob("*.whl")),
                    sdist=next((entry / "dist").glob("*.tar.gz")), venv=entry / "venv")
