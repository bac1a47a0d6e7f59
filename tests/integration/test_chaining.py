"""Chaining through libcni: the `ovs` plugin first, then Debian's reference meta plugins
(tuning, portmap, bandwidth), as a runtime's conflist would have them; and the runtime's ways
to ask for a particular address (runtimeConfig `ips`, CNI_ARGS `IP=`).

The driver runs inside the lab host's namespace, where a runtime on that host would run: the
meta plugins act on the host side of the container's veth (tc qdiscs, iptables rules), which
lives there.

Debian's portmap 1.1.1 CHECKs IPv6 DNAT chains whenever ip6tables works, even for a container
without IPv6, and then fails (containernetworking/plugins#819, fixed upstream later). Our
containers here are IPv4-only, so the driver's PATH offers `iptables` but no `ip6tables`,
which makes portmap skip IPv6 as it would on a host without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from libcni.build import Libcni, write_conflist

from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import (
    container_addresses,
    container_link,
    host_snapshot,
    ovs_plugin,
)

NETWORK = "my-net"
MAC = "c2:00:0a:00:4c:01"
SYSCTL = "net.ipv4.conf.eth0.arp_ignore"
RATE, BURST = 10_000_000, 200_000  # bit/s and bits, as the bandwidth plugin takes them


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


@pytest.fixture(scope="module")
def ipv4_only_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PATH with iptables but no ip6tables (see the module docstring)."""
    bindir = tmp_path_factory.mktemp("ipv4-only-bin")
    iptables = shutil.which("iptables")
    assert iptables is not None
    os.symlink(iptables, bindir / "iptables")
    yield f"{bindir}:/usr/bin:/bin"


@pytest.fixture
def libcni(libcni_driver: str, reference_plugins: str, lab: Lab, tmp_path: Path,
           ipv4_only_path: str) -> Libcni:
    return Libcni(libcni_driver, [lab.cni_bin, reference_plugins], str(tmp_path / "cache"),
                  in_netns=lab.hosts[0].netns, path_env=ipv4_only_path)


def chain(version: str, h: LabHost) -> dict[str, Any]:
    return {"cniVersion": version, "name": NETWORK, "plugins": [
        # ovs takes the MAC itself (its flows and records must know the container's real MAC);
        # tuning is given the same one and so changes nothing behind its back.
        ovs_plugin(h, capabilities={"mac": True}),
        {"type": "tuning", "sysctl": {SYSCTL: "1"}, "capabilities": {"mac": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "ingressRate": RATE, "ingressBurst": BURST,
         "egressRate": RATE, "egressBurst": BURST},
    ]}


def nat_rules(h: LabHost) -> str:
    return run(["iptables", "-w", "-t", "nat", "-S"], netns=h.netns).stdout


def qdiscs(h: LabHost, dev: str) -> str:
    return run(["tc", "qdisc", "show", "dev", dev], netns=h.netns).stdout


def endpoint_record(lab: Lab, container_id: str) -> dict[str, Any]:
    out = run(lab.etcdctl("get", "--print-value-only",
                          f"/overlay/v1/endpoints/{NETWORK}/{container_id}/eth0"),
              netns=lab.underlay_ns).stdout
    return dict(json.loads(out)) if out.strip() else {}


@pytest.mark.parametrize("version,host_port", [("1.0.0", 18080), ("0.4.0", 18081)])
def test_ovs_tuning_portmap_bandwidth(lab: Lab, libcni: Libcni, netns: str, tmp_path: Path,
                                      version: str, host_port: int) -> None:
    h, cid = lab.hosts[0], f"chain-{version.replace('.', '')}"
    conf = write_conflist(tmp_path, chain(version, h))
    cap_args = {"mac": MAC, "portMappings": [{"hostPort": host_port, "containerPort": 80,
                                              "protocol": "tcp"}]}
    ops = {"netns": netns, "container_id": cid, "cap_args": cap_args}
    before = host_snapshot(lab, h, netns)

    added = libcni(conf, "add", **ops)
    try:  # DEL whatever happens: tuning keeps state in /run/cni, outside the lab
        assert added.returncode == 0, str(added)
        result = added.json()
        assert result["cniVersion"] == version
        # The final result still lists what ovs made: host veth, container eth0, its address.
        interfaces, ips = result["interfaces"], result["ips"]
        assert len(ips) == 1, result
        container_if = interfaces[ips[0]["interface"]]
        assert container_if["name"] == "eth0" and container_if["sandbox"] == netns, result
        assert container_if["mac"] == MAC, result
        host_ifs = [i["name"] for i in interfaces if not i.get("sandbox")]
        veth = next((n for n in host_ifs if n.startswith("ovl")), None)
        assert veth is not None, f"no host-side veth in {result}"
        ifb = next((n for n in host_ifs if n.startswith("bwp")), None)
        assert ifb is not None, f"bandwidth's ifb (egress shaping) missing from {result}"
        address = ips[0]["address"]
        ip = address.split("/")[0]

        # In the container: the address, the requested MAC, tuning's sysctl.
        assert container_addresses(netns) == [address]
        assert container_link(netns)["address"] == MAC
        sysctl = run(["cat", "/proc/sys/" + SYSCTL.replace(".", "/")], netns=os.path.basename(netns))
        assert sysctl.stdout.strip() == "1"
        # ovs knows the MAC the container really has (its anti-spoofing flows match on it).
        assert endpoint_record(lab, cid).get("mac") == MAC
        # On the host: bandwidth's qdiscs (tbf for ingress, redirect to the ifb for egress) ...
        assert "tbf" in qdiscs(h, veth) and "ingress" in qdiscs(h, veth), qdiscs(h, veth)
        assert "tbf" in qdiscs(h, ifb), qdiscs(h, ifb)
        # ... and portmap's DNAT to the container.
        rules = nat_rules(h)
        assert f"--dport {host_port} -j DNAT --to-destination {ip}:80" in rules, rules
        assert "CNI-HOSTPORT-MASQ" in rules  # snat: true

        checked = libcni(conf, "check", **ops)
        assert checked.returncode == 0, str(checked)
    finally:
        deleted = libcni(conf, "del", **ops)
    assert deleted.returncode == 0, str(deleted)
    assert f"--dport {host_port} " not in nat_rules(h)
    assert host_snapshot(lab, h, netns) == before
    assert not os.path.exists(libcni.cache_file(NETWORK, cid))


@pytest.mark.parametrize("how", ["runtimeConfig", "CNI_ARGS"])
def test_requested_address(lab: Lab, libcni: Libcni, netns: str, tmp_path: Path, how: str) -> None:
    h = lab.hosts[0]
    if how == "runtimeConfig":
        wanted = "10.0.0.78"
        plugin = ovs_plugin(h, capabilities={"ips": True})
        ops: dict[str, Any] = {"cap_args": {"ips": [f"{wanted}/24"]}}
    else:
        wanted = "10.0.0.77"
        plugin = ovs_plugin(h)
        ops = {"cni_args": f"IgnoreUnknown=1;IP={wanted}"}
    conf = write_conflist(tmp_path, {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [plugin]})
    ops.update(netns=netns, container_id=f"want-{how.lower()}")
    before = host_snapshot(lab, h, netns)

    added = libcni(conf, "add", **ops)
    assert added.returncode == 0, str(added)
    assert [i["address"] for i in added.json()["ips"]] == [f"{wanted}/24"]
    assert container_addresses(netns) == [f"{wanted}/24"]
    assert f"/overlay/v1/ipam/{NETWORK}/{wanted}" in host_snapshot(lab, h)["etcd"]
    assert libcni(conf, "check", **ops).returncode == 0

    assert libcni(conf, "del", **ops).returncode == 0
    assert host_snapshot(lab, h, netns) == before


def test_published_port_tuning_and_bandwidth_on_real_traffic(lab: Lab, libcni: Libcni,
                                                             netns: str, tmp_path: Path) -> None:
    """portmap after ovs, end to end: from the underlay (outside the host) a TCP connection to
    host:18090 reaches the container's server through the gateway, and the reply comes back;
    bandwidth's 10 Mbit/s shapes that traffic; tuning's sysctl is in force."""
    h, cid, host_port = lab.hosts[0], "chain-e2e", 18090
    conf = write_conflist(tmp_path, chain("1.0.0", h))
    ops = {"netns": netns, "container_id": cid, "cap_args": {
        "mac": MAC, "portMappings": [{"hostPort": host_port, "containerPort": 80,
                                      "protocol": "tcp"}]}}
    added = libcni(conf, "add", **ops)
    name = os.path.basename(netns)
    server = subprocess.Popen(in_netns(name, ["iperf3", "-s", "-p", "80"]),
                              stdout=subprocess.DEVNULL)
    try:
        assert added.returncode == 0, str(added)
        time.sleep(0.5)
        out = run(["iperf3", "-c", h.vtep, "-p", str(host_port), "-t", "3", "-J"],
                  netns=lab.underlay_ns, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        received = report["end"]["sum_received"]["bits_per_second"]
        print(f"\n  underlay -> {h.vtep}:{host_port} -> container: {received / 1e6:.1f} Mbit/s")
        # The reply path works (iperf3 needs both directions) and the shaping is real: about
        # RATE, not the hundreds of Mbit/s the path gives unshaped.
        assert 0 < received < RATE * 2
        assert run(["sysctl", "-n", SYSCTL], netns=name).stdout.strip() == "1"
    finally:
        server.terminate()
        server.wait()
        deleted = libcni(conf, "del", **ops)
    assert deleted.returncode == 0, str(deleted)
