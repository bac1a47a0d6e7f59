"""python -m overlay.install into a temporary root: what lands where, and that a second run
changes nothing. No root needed, no systemd touched (the root is not `/`)."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import install
from overlay.agent.config import load
from overlay_plugin_ovs import launcher


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A stand-in virtualenv with the three console scripts the installer links to."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("ovs", "overlay-agent", "overlayctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path / "venv"


def assert_plugin_launcher(path: Path, prefix: Path) -> None:
    """The plugin is a launcher (not a link): the venv's Python without site, this package."""
    assert not path.is_symlink() and os.access(path, os.X_OK)
    assert path.read_text() == launcher.script(str(prefix / "bin/python3"))
    assert path.read_text().startswith(f"#!{prefix}/bin/python3 -IS\n")


def unit(path: Path) -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(interpolation=None, strict=True)
    parsed.read_string(path.read_text())
    return parsed


def test_installs_plugin_commands_unit_and_example_config(tmp_path: Path, prefix: Path) -> None:
    root = tmp_path / "root"
    report = install.install(str(root), str(prefix))
    assert_plugin_launcher(root / "opt/cni/bin/ovs", prefix)
    for name in ("overlay-agent", "overlayctl"):
        assert os.readlink(root / "usr/local/bin" / name) == str(prefix / "bin" / name)
    service = unit(root / "etc/systemd/system/overlay-agent.service")
    assert shlex.split(service["Service"]["ExecStart"]) == [
        str(prefix / "bin/overlay-agent"), "--config", "/etc/overlay/agent.toml"]
    assert "openvswitch-switch.service" in service["Unit"]["After"].split()
    assert "openvswitch-switch.service" in service["Unit"]["Requires"].split()
    assert service["Service"]["Restart"] == "on-failure"
    assert service["Service"]["RuntimeDirectory"] == "overlay"
    caps = set(service["Service"]["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"} <= caps
    assert service["Install"]["WantedBy"] == "multi-user.target"
    # The example configuration is one the agent loads, with the unit's socket under
    # RuntimeDirectory (/run/overlay).
    cfg = load(["--config", str(root / "etc/overlay/agent.toml")])
    assert cfg.socket == "/run/overlay/agent.sock"
    assert len(report.changed) == 5 and not report.unchanged


def test_second_run_changes_nothing_and_keeps_the_operators_config(tmp_path: Path,
                                                                  prefix: Path) -> None:
    root = tmp_path / "root"
    install.install(str(root), str(prefix))
    config = root / "etc/overlay/agent.toml"
    config.write_text('host = "mine"\n')
    report = install.install(str(root), str(prefix))
    assert report.changed == [] and len(report.unchanged) == 5
    assert config.read_text() == 'host = "mine"\n'


def test_a_wrong_link_and_a_stale_unit_are_replaced(tmp_path: Path, prefix: Path) -> None:
    root = tmp_path / "root"
    (root / "opt/cni/bin").mkdir(parents=True)
    (root / "opt/cni/bin/ovs").symlink_to("/nowhere/ovs")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/overlay-agent.service").write_text("[Unit]\n")
    report = install.install(str(root), str(prefix))
    assert str(root / "opt/cni/bin/ovs") in report.changed
    assert_plugin_launcher(root / "opt/cni/bin/ovs", prefix)
    assert "ExecStart" in (root / "etc/systemd/system/overlay-agent.service").read_text()


def test_refuses_a_prefix_without_overlay(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="overlay-agent|ovs"):
        install.install(str(tmp_path / "root"), str(tmp_path))
    assert not (tmp_path / "root").exists()


def test_command_line_with_this_environment(tmp_path: Path) -> None:
    # The real entry point and this venv's real console scripts, as `make deps` installed them.
    if not Path(sys.prefix, "bin", "overlay-agent").exists():
        pytest.skip(f"overlay is not installed in {sys.prefix}")
    run = [sys.executable, "-m", "overlay.install", "--root", str(tmp_path)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("installed ") == 5
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout.count("unchanged ") == 5, second.stdout
