"""The file a runtime executes as the `ovs` plugin: Python started without `site`.

Why not the console script pip writes (VENV/bin/ovs): it starts Python with `site`, which
reads the virtualenv's .pth files (an editable install's import hook pulls in pathlib and
more) before the plugin's first line; on a loaded 2-core machine that was 15-35 ms of a
plugin whose whole start-up is now about 25 ms. The launcher runs the same code with
`python -IS` (isolated: no PYTHON* variables, no user site, no working directory on the path;
no site) and puts the directory holding this package on sys.path itself, which is all the
plugin needs: it imports nothing outside the standard library's C modules (main.py). It ends
with os._exit once the answer is flushed (main.main_and_exit): no interpreter teardown.

    python -m overlay_plugin_ovs.launcher     prints the launcher for this interpreter
"""

from __future__ import annotations

import os
import sys

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(python: str, package_parent: str = PACKAGE_PARENT) -> str:
    """The launcher's text. One shebang argument: Linux passes everything after the
    interpreter as a single word, and `-IS` is read as -I -S."""
    return (f"#!{python} -IS\n"
            "# The ovs CNI plugin (written by overlay_plugin_ovs/launcher.py: Python without\n"
            "# site, for start-up time).\n"
            "import sys\n"
            f"sys.path.append({package_parent!r})\n"
            "from overlay_plugin_ovs.main import main_and_exit\n"
            "main_and_exit()\n")


if __name__ == "__main__":
    sys.stdout.write(script(sys.executable))
