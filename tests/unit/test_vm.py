"""overlay.lab.vm's pure parts: the units and files it writes, and what it reads from `ip`."""

from __future__ import annotations

import configparser
import ipaddress
import os
import shlex
from pathlib import Path

import pytest

from overlay.agent.config import load
from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab import vm

IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86000sec
3: eth1    inet 192.168.56.12/24 brd 192.168.56.255 scope global eth1\\       valid_lft forever
7: br-phy@if6    inet 172.31.0.2/24 scope global br-phy\\       valid_lft forever
"""


def parse_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)  # strict: no key twice
    unit.read_string(text)
    return unit


def test_etcd_unit_runs_the_netns_labs_etcd_command_line() -> None:
    command = steps.etcd_command("node1", vm.ETCD_DATA_DIR, "192.168.56.11")
    unit = parse_unit(vm.etcd_unit(["/usr/bin/etcd", *command[1:]]))
    assert shlex.split(unit["Service"]["ExecStart"]) == ["/usr/bin/etcd", *command[1:]]
    assert unit["Service"]["Type"] == "notify"  # `systemctl start` returns once etcd serves
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Unit"]["Conflicts"] == vm.PACKAGED_ETCD_UNIT
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_etcd_command_serves_the_address_and_loopback() -> None:
    # The netns lab's etcd, as it was spelled out in topology.py before it was shared.
    assert steps.etcd_command("lab", "/d", "172.31.0.254") == [
        "etcd", "--name", "lab", "--data-dir", "/d",
        "--listen-client-urls", "http://172.31.0.254:2379,http://127.0.0.1:2379",
        "--advertise-client-urls", "http://172.31.0.254:2379",
        "--listen-peer-urls", "http://127.0.0.1:2380"]


def test_agent_config_is_the_system_ovs_and_kernel_datapath(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.toml")
    steps.write_agent_config(path, **vm.agent_settings(
        "node2", "http://192.168.56.11:2379", "eth1", "192.168.56.12"))
    cfg = load(["--config", path])
    assert (cfg.host, cfg.underlay_interface, cfg.underlay_ip) == ("node2", "eth1", "192.168.56.12")
    assert cfg.etcd_endpoints == ("http://192.168.56.11:2379",)
    assert cfg.datapath == "system"
    assert cfg.ovsdb == "unix:/var/run/openvswitch/db.sock" and cfg.rundir == "/var/run/openvswitch"
    assert cfg.socket == vm.AGENT_SOCKET


def test_agent_config_without_an_address_lets_the_agent_pick_the_interfaces(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.toml")
    steps.write_agent_config(path, **vm.agent_settings("n", "http://a:1, http://b:2", "ens6"))
    cfg = load(["--config", path])
    assert cfg.underlay_ip == "" and cfg.etcd_endpoints == ("http://a:1", "http://b:2")


def test_addresses_from_ip_oneline() -> None:
    found = vm.ipv4_addresses(IP_ADDR)
    assert [name for name, _ in found] == ["lo", "eth0", "eth1", "br-phy"]
    assert found[2][1] == ipaddress.IPv4Interface("192.168.56.12/24")
    assert vm.interface_with_address(IP_ADDR, "192.168.56.12") == "eth1"
    assert vm.interface_with_address(IP_ADDR, "172.31.0.2/24") == "br-phy"
    with pytest.raises(RuntimeError, match="192.168.56.11"):
        vm.interface_with_address(IP_ADDR, "192.168.56.11")
    assert vm.ipv4_addresses("") == []


def test_find_endpoint_by_container_id() -> None:
    records = [{"container_id": "c1", "ip": "10.0.0.2/24", "host": "node1"},
               {"container_id": "c2", "ip": "10.0.0.3/24", "host": "node2"}]
    assert vm.find_endpoint(records, "c2") == records[1]
    assert vm.find_endpoint(records, "c3") is None


def test_the_vm_conflist_is_what_the_plugin_gets(tmp_path: Path) -> None:
    path = tmp_path / ctr.conflist_name("my-net")
    assert path.name == "10-my-net.conflist"
    conflist = steps.write_cni_config(str(path), network="my-net", vni=vm.DEFAULT_VNI,
                                      subnet=vm.DEFAULT_SUBNET, bridge="br-int",
                                      agent_socket=vm.AGENT_SOCKET)
    conf = ctr.plugin_netconf(conflist)
    assert conf["type"] == "ovs" and conf["name"] == "my-net" and conf["vxlanID"] == 42
    assert conf["agentSocket"] == vm.AGENT_SOCKET


def test_install_plugin_writes_the_launcher_once(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The VMs have no compiled plugin (their box has no Go): the launcher, as asked for here.
    # (The compiled form: tests/unit/test_plugin_forms.py.)
    monkeypatch.setenv("OVERLAY_PLUGIN", "python")
    cni_bin = str(tmp_path / "opt" / "cni" / "bin")
    path = steps.install_plugin(cni_bin)
    assert path == os.path.join(cni_bin, "ovs") and os.access(path, os.X_OK)
    with open(path) as fh:
        assert fh.read().startswith(f"#!{os.path.join(steps.scripts_dir(), 'python3')} -IS\n")
    mtime = os.stat(path).st_mtime_ns
    assert steps.install_plugin(cni_bin) == path  # a second run keeps it
    assert os.stat(path).st_mtime_ns == mtime


def test_host_needs_the_underlay_by_address_or_by_name() -> None:
    parser = vm.build_parser()
    args = parser.parse_args(["host", "--etcd", "http://e:2379", "--underlay-interface", "eth1"])
    assert (args.underlay_interface, args.underlay_ip, args.network, args.vni, args.subnet) == (
        "eth1", None, "my-net", 42, "10.0.0.0/24")
    with pytest.raises(SystemExit):
        parser.parse_args(["host", "--etcd", "http://e:2379"])
    with pytest.raises(SystemExit):
        parser.parse_args(["host", "--etcd", "x", "--underlay-ip", "1.2.3.4", "--underlay-interface", "e"])
