"""python -m overlay.install: put overlay in place on a host, the way a package would.

    python -m overlay.install [--root DIR] [--prefix VENV] [--no-reload]

What it installs (every path below under --root, default /):

    /opt/cni/bin/ovs                         the CNI plugin a runtime execs: a launcher that
                                             starts VENV/bin/python3 without site (fast
                                             start-up; overlay_plugin_ovs/launcher.py)
    /usr/local/bin/overlay-agent, overlayctl -> VENV/bin/..., so operators find them on PATH
    /etc/systemd/system/overlay-agent.service  packaging/overlay-agent.service, ExecStart filled in
    /etc/overlay/agent.toml                  packaging/agent.toml, only if no file is there

Why symlinks into the virtualenv rather than copies: the console scripts' shebangs name the
venv's Python, so a copy would still depend on the venv and merely go stale after an upgrade.
The plugin is the exception: pip's console script starts Python with `site`, which costs a
process that lives for one CNI call more than the rest of its start-up, so its launcher names
the venv's Python and the directory of the installed plugin package instead (the package of
the environment this module runs from).

Idempotent: a file whose content is already right is left alone, a wrong symlink is replaced,
an existing agent.toml is never touched (it is the operator's). `systemctl daemon-reload` runs
only when the unit changed and the root is the running system's. The Vagrant lab provisions
through this module (overlay.lab.vm host calls install()), so the lab runs the shipped unit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from overlay_plugin_ovs import launcher

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"
UNIT_NAME = "overlay-agent.service"
UNIT_PATH = "etc/systemd/system/" + UNIT_NAME
CONFIG_PATH = "etc/overlay/agent.toml"
PLUGIN_PATH = "opt/cni/bin/ovs"
BIN_DIR = "usr/local/bin"
COMMANDS = ("overlay-agent", "overlayctl")


@dataclass
class Report:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def note(self, path: Path, changed: bool) -> None:
        (self.changed if changed else self.unchanged).append(str(path))


def default_prefix() -> str:
    """The environment this module runs from: its console scripts are what gets installed."""
    return sys.prefix


def unit_text(prefix: str) -> str:
    template = (PACKAGING / UNIT_NAME).read_text()
    return template.replace("@AGENT@", os.path.join(prefix, "bin", "overlay-agent"))


def write_if_different(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)  # atomic: a half-written unit is never seen by systemd
    return True


def link(path: Path, target: str) -> bool:
    if path.is_symlink() and os.readlink(path) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    return True


def install(root: str = "/", prefix: str | None = None, *, reload: bool = True) -> Report:
    """Install into `root`; raises FileNotFoundError if `prefix` lacks the console scripts."""
    prefix = prefix or default_prefix()
    scripts = Path(prefix, "bin")
    for name in ("ovs", *COMMANDS):
        if not (scripts / name).exists():
            raise FileNotFoundError(f"{scripts / name} missing: is overlay installed in {prefix}?")
    base = Path(root)
    report = Report()
    plugin = base / PLUGIN_PATH
    was_link = plugin.is_symlink()  # what earlier versions installed
    if was_link:
        plugin.unlink()
    changed = write_if_different(plugin, launcher.script(str(scripts / "python3")), mode=0o755)
    report.note(plugin, changed or was_link)
    for name in COMMANDS:
        report.note(base / BIN_DIR / name, link(base / BIN_DIR / name, str(scripts / name)))
    unit = base / UNIT_PATH
    unit_changed = write_if_different(unit, unit_text(prefix))
    report.note(unit, unit_changed)
    config = base / CONFIG_PATH
    if not config.exists():
        write_if_different(config, (PACKAGING / "agent.toml").read_text())
        report.note(config, True)
    else:
        report.note(config, False)
    if unit_changed and reload and base.resolve() == Path("/") and os.path.isdir("/run/systemd/system"):
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/", help="install under this directory (default /)")
    parser.add_argument("--prefix", help="the virtualenv holding overlay (default: this one)")
    parser.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")
    args = parser.parse_args(argv)
    try:
        report = install(args.root, args.prefix, reload=not args.no_reload)
    except (FileNotFoundError, PermissionError, subprocess.CalledProcessError) as err:
        print(f"overlay.install: {err}", file=sys.stderr)
        return 1
    for path in report.changed:
        print(f"installed {path}")
    for path in report.unchanged:
        print(f"unchanged {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
