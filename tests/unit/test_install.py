"""overlay-install into a temporary root: what lands where, that a second run changes nothing,
what --cni-only and --conflist do, and what is refused. No root needed, no systemd touched."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from overlay import install
from overlay.agent.config import load
from overlay.install import cli, conflist
from overlay_plugin_ovs import launcher

CONFLIST = "etc/cni/net.d/10-overlay.conflist"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A stand-in virtualenv with the console scripts and the Python the installer names."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python3", "ovs", "overlay-agent", "overlayctl"):
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


def test_installs_plugin_conflist_commands_unit_and_example_config(tmp_path: Path,
                                                                   prefix: Path) -> None:
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
    # RuntimeDirectory (/run/overlay), and the conflist sends the plugin to that socket.
    cfg = load(["--config", str(root / "etc/overlay/agent.toml")])
    assert cfg.socket == "/run/overlay/agent.sock"
    conf = json.loads((root / CONFLIST).read_text())
    assert [p["type"] for p in conf["plugins"]] == ["ovs", "portmap"]
    assert conf["plugins"][0]["agentSocket"] == cfg.socket
    assert conf["plugins"][0]["bridge"] == cfg.bridge
    assert len(report.changed) == 6 and not report.unchanged


def test_second_run_changes_nothing_and_keeps_the_operators_files(tmp_path: Path,
                                                                  prefix: Path) -> None:
    root = tmp_path / "root"
    install.install(str(root), str(prefix))
    config = root / "etc/overlay/agent.toml"
    config.write_text('host = "mine"\n')
    mine = (root / CONFLIST).read_text().replace("10.244.0.0/16", "10.9.0.0/16")
    (root / CONFLIST).write_text(mine)
    report = install.install(str(root), str(prefix))
    assert report.changed == [] and len(report.unchanged) == 6
    assert config.read_text() == 'host = "mine"\n'
    assert (root / CONFLIST).read_text() == mine


def test_loopback_and_portmap_are_linked_from_debians_dir_or_said_missing(
        tmp_path: Path, prefix: Path) -> None:
    """containerd's CRI runs `loopback` for every pod, and the conflist chains `portmap`: both
    from /opt/cni/bin, where Debian's package does not put them (it uses /usr/lib/cni)."""
    bare = tmp_path / "bare"
    report = install.install(str(bare), str(prefix))
    assert [w.split(" missing")[0] for w in report.warnings] == [
        str(bare / "opt/cni/bin/loopback"), str(bare / "opt/cni/bin/portmap")]
    assert "containernetworking-plugins" in report.warnings[0]
    root = tmp_path / "root"
    for name in ("loopback", "portmap"):
        (root / "usr/lib/cni").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/cni" / name).write_text("#!/bin/sh\n")
    (root / "opt/cni/bin").mkdir(parents=True)
    (root / "opt/cni/bin/portmap").write_text("the operator's own\n")
    report = install.install_with(install.Options(root=str(root), cni_only=True))
    assert os.readlink(root / "opt/cni/bin/loopback") == "/usr/lib/cni/loopback"
    assert (root / "opt/cni/bin/portmap").read_text() == "the operator's own\n"
    assert str(root / "opt/cni/bin/loopback") in report.changed and report.warnings == []
    again = install.install_with(install.Options(root=str(root), cni_only=True))
    assert again.changed == [] and again.warnings == []


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
    with pytest.raises(install.InstallError, match="is overlay installed"):
        install.install(str(tmp_path / "root"), str(tmp_path))
    assert not (tmp_path / "root").exists()


def test_refuses_slash_while_the_test_suite_runs() -> None:
    assert os.environ["OVERLAY_INSTALL_REFUSE_SLASH"] == "1"  # tests/conftest.py
    with pytest.raises(install.InstallError, match="refusing to install onto /"):
        install.install_with(install.Options(root="/", cni_only=True))


def run_plugin(path: Path, command: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {"CNI_COMMAND": command, "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(path)], input=stdin, env=env, capture_output=True, timeout=30)


def test_cni_only_writes_a_standalone_plugin_the_system_python_runs(tmp_path: Path) -> None:
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3 (Debian's python3 package)")
    root = tmp_path / "node"
    report = install.install_with(install.Options(root=str(root), prefix="/nowhere", cni_only=True))
    plugin = root / "opt/cni/bin/ovs"
    assert sorted(report.changed) == sorted([str(plugin), str(root / CONFLIST)])
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["10-overlay.conflist", "ovs"]
    assert plugin.read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")
    names = zipfile.ZipFile(plugin).namelist()
    assert "__main__.py" in names and "overlay_plugin_ovs/main.pyc" in names
    # Run by the node's python3, outside any virtualenv: VERSION answers, and an ADD with no
    # agent behind the socket is CNI error 11 (try again later), not a traceback.
    version = run_plugin(plugin, "VERSION", b'{"cniVersion": "1.0.0"}')
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    netconf = {"cniVersion": "1.0.0", "name": "n", "type": "ovs", "vxlanID": 5,
               "agentSocket": str(tmp_path / "none.sock"),
               "ipam": {"type": "overlay", "subnet": "10.1.0.0/24"}}
    add = subprocess.run([str(plugin)], input=json.dumps(netconf).encode(), capture_output=True,
                         timeout=30, env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                                          "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
                                          "CNI_PATH": "/opt/cni/bin"})
    assert add.returncode != 0 and json.loads(add.stdout)["code"] == 11, add.stdout
    again = install.install_with(install.Options(root=str(root), prefix="/nowhere", cni_only=True))
    assert again.changed == []  # the same package makes the same archive


def test_conflist_option_replaces_and_a_bad_one_writes_nothing(tmp_path: Path,
                                                               prefix: Path) -> None:
    root = tmp_path / "root"
    good = json.loads(conflist.default_text())
    good["plugins"][0]["vxlanID"] = 77
    mine = tmp_path / "mine.conflist"
    mine.write_text(json.dumps(good))
    install.install_with(install.Options(root=str(root), prefix=str(prefix), conflist=str(mine)))
    assert json.loads((root / CONFLIST).read_text())["plugins"][0]["vxlanID"] == 77
    for bad, why in ((dict(good, plugins=[{"type": "bridge"}]), "one plugin of type"),
                     (dict(good, plugins=[dict(good["plugins"][0], vxlanID=0)]), "vxlanID"),
                     (dict(good, name="bad name"), "name must match")):
        mine.write_text(json.dumps(bad))
        other = tmp_path / "other"
        with pytest.raises(install.InstallError, match=why):
            install.install_with(install.Options(root=str(other), prefix=str(prefix),
                                                 conflist=str(mine)))
        assert not other.exists()
    mine.write_text("{")
    out = subprocess.run([sys.executable, "-m", "overlay.install", "--root", str(tmp_path / "x"),
                          "--prefix", str(prefix), "--conflist", str(mine)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not valid JSON" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()


def test_command_line_with_this_environment(tmp_path: Path) -> None:
    # The real entry point and this venv's real console scripts, as `make deps` installed them.
    if not Path(sys.prefix, "bin", "overlay-install").exists():
        pytest.skip(f"overlay is not installed in {sys.prefix}")
    run = [str(Path(sys.prefix, "bin", "overlay-install")), "--root", str(tmp_path)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("installed ") == 6
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout.count("unchanged ") == 6, second.stdout


def test_parser_knows_every_option_the_docs_use() -> None:
    args = cli.build_parser().parse_args(["--root", "/host", "--cni-only", "--conflist", "f"])
    assert (args.root, args.cni_only, args.conflist) == ("/host", True, "f")


def test_the_compiled_plugin_is_installed_when_built_and_python_when_asked(
        tmp_path: Path, prefix: Path) -> None:
    compiled = prefix / "bin" / "overlay-cni-ovs"
    compiled.write_bytes(b"\x7fELF compiled plugin")
    compiled.chmod(0o755)
    for cni_only in (False, True):  # a host with the venv, and a Kubernetes node
        root = tmp_path / f"root-{cni_only}"
        install.install_with(install.Options(root=str(root), prefix=str(prefix), cni_only=cni_only))
        plugin = root / "opt/cni/bin/ovs"
        assert plugin.read_bytes() == compiled.read_bytes() and os.access(plugin, os.X_OK)
    # --plugin-python: the standalone Python plugin, compiled one or not.
    install.install_with(install.Options(root=str(tmp_path / "root-py"), prefix=str(prefix),
                                         cni_only=True, plugin_python="/usr/bin/python3"))
    assert (tmp_path / "root-py/opt/cni/bin/ovs").read_bytes().startswith(b"#!/usr/bin/python3 -IS\n")
