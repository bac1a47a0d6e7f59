"""What overlay-install puts where (every path under --root, default /).

Full install (a host that runs the agent from a virtualenv, e.g. /opt/overlay/venv):

    /opt/cni/bin/ovs                    the plugin: a copy of VENV/bin/overlay-cni-ovs, the
                                        compiled plugin, when `make deps` built it there; else
                                        a launcher naming VENV/bin/python3 (-IS, no site:
                                        start-up time; overlay_plugin_ovs/launcher.py)
    /etc/cni/net.d/10-overlay.conflist  overlay.conflist, or --conflist FILE
    /usr/local/bin/overlay-agent, overlayctl -> VENV/bin/..., so operators find them on PATH
    /etc/systemd/system/overlay-agent.service  overlay-agent.service, ExecStart filled in
    /etc/overlay/agent.toml             agent.toml, only if no file is there

--cni-only (the Kubernetes init container, whose root is the node's filesystem mounted in):
the plugin and the conflist alone: the compiled plugin when the image holds it (a static
binary, nothing of the image needed on the node), else the standalone Python plugin
(overlay.install.plugin), one file run by the node's python3, since the virtualenv stays in
the image. --plugin-python PATH asks for the standalone one.

Both: the reference plugins the runtime runs beside ours, `loopback` (containerd's CRI plugin
runs it for every pod: without it every RunPodSandbox fails) and those the conflist chains
(`portmap`), linked into /opt/cni/bin from /usr/lib/cni, where Debian's
containernetworking-plugins puts them, when they are there and /opt/cni/bin has none; when
neither has one, the report says which is missing and what to install.

Why symlinks into the virtualenv rather than copies: the console scripts' shebangs name the
venv's Python, so a copy would still depend on the venv and merely go stale after an upgrade.

Idempotent: a file whose content is already right is left alone, a wrong symlink is replaced.
What the operator edits is theirs: an existing agent.toml is never touched, nor an existing
conflist unless --conflist names the one to install. `systemctl daemon-reload` runs only when
the unit changed and the root is the running system's. Every conflist is checked first
(overlay.install.conflist): a bad one fails the install before any file is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from overlay.install import conflist as conflists
from overlay.install import plugin as plugins
from overlay.install.files import Report, link, write_if_different

UNIT_NAME = "overlay-agent.service"
UNIT_PATH = "etc/systemd/system/" + UNIT_NAME
CONFIG_PATH = "etc/overlay/agent.toml"
PLUGIN_PATH = "opt/cni/bin/ovs"
CONFLIST_DIR = "etc/cni/net.d"
CNI_BIN_DIR = "opt/cni/bin"
DEBIAN_CNI_DIR = "usr/lib/cni"  # Debian's containernetworking-plugins
# containerd's CRI plugin runs it for every pod sandbox, from the conflists' bin_dir.
RUNTIME_PLUGINS = ("loopback",)
BIN_DIR = "usr/local/bin"
COMMANDS = ("overlay-agent", "overlayctl")
NODE_PYTHON = "/usr/bin/python3"  # what runs the standalone plugin on a node (Debian's)
# Set by the test suite (tests/conftest.py): no test may install onto the machine it runs on.
GUARD_ENV = "OVERLAY_INSTALL_REFUSE_SLASH"


class InstallError(Exception):
    """The install cannot go ahead; nothing was written."""


@dataclass(frozen=True)
class Options:
    root: str = "/"
    prefix: str = sys.prefix              # the virtualenv holding overlay (default: this one)
    cni_only: bool = False
    conflist: str | None = None           # a conflist file to install instead of the default
    plugin_python: str | None = None      # standalone plugin run by this Python
    reload: bool = True                   # systemctl daemon-reload when the unit changed


def data_text(name: str) -> str:
    return resources.files("overlay.install").joinpath(name).read_text()


def unit_text(prefix: str) -> str:
    return data_text(UNIT_NAME).replace("@AGENT@", os.path.join(prefix, "bin", "overlay-agent"))


def _preflight(opts: Options) -> str:
    """The conflist's text, once everything the install needs is known to be there."""
    if os.environ.get(GUARD_ENV) == "1" and Path(opts.root).resolve() == Path("/"):
        raise InstallError(f"refusing to install onto / ({GUARD_ENV}=1): pass --root DIR")
    if not opts.cni_only:
        scripts = Path(opts.prefix, "bin")
        for name in ("python3", *COMMANDS):
            if not (scripts / name).exists():
                raise InstallError(f"{scripts / name} missing: is overlay installed in {opts.prefix}?")
    try:
        text = Path(opts.conflist).read_text() if opts.conflist else conflists.default_text()
    except OSError as exc:
        raise InstallError(f"cannot read {opts.conflist}: {exc.strerror}") from None
    try:
        conflists.check(text)
    except conflists.ConflistError as err:
        raise InstallError(f"{opts.conflist or 'the default conflist'}: {err}") from None
    return text


def _install_cni(base: Path, opts: Options, conflist_text: str, report: Report) -> None:
    plugin = base / PLUGIN_PATH
    binary = None if opts.plugin_python else plugins.compiled(opts.prefix)
    python = opts.plugin_python or (NODE_PYTHON if opts.cni_only else None)
    if binary:
        content: str | bytes = binary.read_bytes()
    elif python:
        content = plugins.standalone(python)
    else:
        content = plugins.launcher(os.path.join(opts.prefix, "bin", "python3"))
    report.note(plugin, write_if_different(plugin, content, mode=0o755))
    target = base / CONFLIST_DIR / conflists.FILE_NAME
    if opts.conflist or not target.exists():
        report.note(target, write_if_different(target, conflist_text))
    else:
        report.note(target, False)
    chained = [p.get("type") for p in json.loads(conflist_text).get("plugins", [])]
    for name in dict.fromkeys([*RUNTIME_PLUGINS, *chained]):
        if isinstance(name, str) and name != "ovs":
            _reference_plugin(base, name, report)


def _reference_plugin(base: Path, name: str, report: Report) -> None:
    """/opt/cni/bin/NAME: the operator's if there, else a link to Debian's, else a warning."""
    path = base / CNI_BIN_DIR / name
    if path.exists() or path.is_symlink():  # a link may name the node's path, not base's
        return
    if (base / DEBIAN_CNI_DIR / name).is_file():
        report.note(path, link(path, "/" + DEBIAN_CNI_DIR + "/" + name))
        return
    why = ("containerd's CRI plugin runs it for every pod" if name in RUNTIME_PLUGINS
           else "the conflist chains it")
    report.warnings.append(f"{path} missing ({why}): apt-get install "
                           "containernetworking-plugins, then run overlay-install again")


def install(root: str = "/", prefix: str | None = None, *, reload: bool = True) -> Report:
    """The full install into `root` (the Vagrant lab's way in); see install_with()."""
    return install_with(Options(root=root, prefix=prefix or sys.prefix, reload=reload))


def install_with(opts: Options) -> Report:
    """Install what `opts` asks for; raises InstallError (before writing anything)."""
    conflist_text = _preflight(opts)
    base = Path(opts.root)
    report = Report()
    _install_cni(base, opts, conflist_text, report)
    if opts.cni_only:
        return report
    for name in COMMANDS:
        path = base / BIN_DIR / name
        report.note(path, link(path, os.path.join(opts.prefix, "bin", name)))
    unit = base / UNIT_PATH
    unit_changed = write_if_different(unit, unit_text(opts.prefix))
    report.note(unit, unit_changed)
    config = base / CONFIG_PATH
    report.note(config, not config.exists() and write_if_different(config, data_text("agent.toml")))
    if (unit_changed and opts.reload and base.resolve() == Path("/")
            and os.path.isdir("/run/systemd/system")):
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    return report
