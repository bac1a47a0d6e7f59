"""overlay-install (also `python -m overlay.install`): the command line of the installer."""

from __future__ import annotations

import argparse
import subprocess
import sys

from overlay.install import installer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay-install", description=installer.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/",
                        help="install under this directory (default /; a Kubernetes init "
                             "container passes where the node's filesystem is mounted)")
    parser.add_argument("--prefix", default=sys.prefix,
                        help="the virtualenv holding overlay (default: the one running this)")
    parser.add_argument("--cni-only", action="store_true",
                        help="only the plugin (compiled if built, else standalone, run by the "
                             "node's python3) and the conflist: what a node needs when the "
                             "agent runs in a container")
    parser.add_argument("--conflist", metavar="FILE",
                        help="install this conflist (checked first) instead of the default, "
                             "replacing the one in place")
    parser.add_argument("--plugin-python", metavar="PATH",
                        help=f"install the standalone Python plugin, run by this Python, even "
                             f"if the compiled one is built (without it and with --cni-only "
                             f"when none is built: {installer.NODE_PYTHON})")
    parser.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = installer.Options(root=args.root, prefix=args.prefix, cni_only=args.cni_only,
                             conflist=args.conflist, plugin_python=args.plugin_python,
                             reload=not args.no_reload)
    try:
        report = installer.install_with(opts)
    except (installer.InstallError, PermissionError, subprocess.CalledProcessError) as err:
        print(f"overlay-install: {err}", file=sys.stderr)
        return 1
    for path in report.changed:
        print(f"installed {path}")
    for path in report.unchanged:
        print(f"unchanged {path}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
