"""The `ovs` plugin as a runtime executes it, in three forms.

compiled(prefix)       the compiled plugin (plugins/ovs/go, built by scripts/build-plugin.sh
                       into PREFIX/bin/overlay-cni-ovs by `make deps`), if it is there: a
                       static binary that answers as the Python plugin does, without an
                       interpreter's start at every call. What every install gets when it was
                       built; the two forms below are what is left without Go.
launcher(python)       a few lines naming a Python environment that holds overlay (the host's
                       virtualenv): `python -IS`, the plugin package's directory on sys.path.
                       What a host that runs the agent from a virtualenv gets.
standalone(python)     one self-contained file: a zip archive of the plugin package behind a
                       `#!PYTHON -IS` line (Python runs a zip file as it runs a script). What a
                       Kubernetes node gets from the agent's init container (`--cni-only`): the
                       agent's virtualenv lives in the container image, not on the node, but
                       the plugin only needs the standard library, so the node's own python3
                       runs it.

The standalone archive holds every module both as source and compiled by the Python building
it (legacy `module.pyc` beside `module.py`, hash-based and unchecked, so zip timestamps do not
matter): when the node's python3 is the same version (the image and the node both Debian 12)
nothing is compiled at each call; with another version zipimport finds the magic number wrong
and compiles the source. Entries carry a fixed timestamp, so the same package makes the same
bytes and a second install changes nothing.
"""

from __future__ import annotations

import io
import os
import py_compile
import tempfile
import zipfile
from pathlib import Path

import overlay_plugin_ovs
from overlay_plugin_ovs import launcher as _launcher

PACKAGE_DIR = Path(overlay_plugin_ovs.__file__).resolve().parent
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: reproducible archives
MAIN = "import sys\nfrom overlay_plugin_ovs.main import main\nsys.exit(main())\n"


COMPILED_NAME = "overlay-cni-ovs"
FORM_ENV = "OVERLAY_PLUGIN"  # "python": the lab installs the Python plugin even when compiled


def compiled(prefix: str) -> Path | None:
    """PREFIX/bin/overlay-cni-ovs, if it was built there."""
    path = Path(prefix, "bin", COMPILED_NAME)
    return path if os.access(path, os.X_OK) else None


def launcher(python: str) -> str:
    return _launcher.script(python, str(PACKAGE_DIR.parent))


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.external_attr = 0o644 << 16
    return info


def _compiled(source: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, source.name + "c")
        py_compile.compile(str(source), cfile=str(out), dfile=source.name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return out.read_bytes()


def standalone(python: str) -> bytes:
    """The archive's bytes, shebang first (see the module's docstring)."""
    buf = io.BytesIO()
    buf.write(f"#!{python} -IS\n".encode())
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(_entry("__main__.py"), MAIN)
        for source in sorted(PACKAGE_DIR.glob("*.py")):
            name = f"overlay_plugin_ovs/{source.name}"
            archive.writestr(_entry(name), source.read_bytes())
            archive.writestr(_entry(name + "c"), _compiled(source))
    return buf.getvalue()

