"""Issue 10: the CNI spec's historical `ovs` example, character for character, made real.

Three lab hosts whose agents manage a bridge named `ovs0`. On host1 a DHCP server (dnsmasq)
runs in a container of network `pci`, attached with `static` IPAM; on host2 another container
takes its address by DHCP. On host0 the example netconf below, unchanged (no agentSocket: the
plugin runs in host0's mount namespace, where /run/overlay is host0's), goes through libcni at
0.1.0. Each host runs the standard `dhcp` daemon in its own namespaces.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from libcni.build import Libcni

from overlay.lab import containers as ctr
from overlay.lab import dhcp
from overlay.lab.hostmounts import in_host_mounts
from overlay.lab.shell import add_netns, del_netns, in_netns, run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import (
    capture,
    container_addresses,
    container_link,
    eventually,
    host_snapshot,
    pcap_frames,
    received,
)

EXAMPLE = """{
  "cniVersion": "0.1.0",
  "name": "pci",
  "type": "ovs",
  "bridge": "ovs0",
  "vxlanID": 42,
  "ipam": {
    "type": "dhcp",
    "routes": [ { "dst": "10.3.0.0/16" }, { "dst": "10.4.0.0/16" } ]
  }
}
"""
SERVER_IP = "10.9.0.2"
POOL = (ipaddress.ip_address("10.9.0.100"), ipaddress.ip_address("10.9.0.150"))
SERVER_CONF = {"cniVersion": "0.3.1", "name": "pci", "type": "ovs", "bridge": "ovs0",
               "vxlanID": 42, "ipam": {"type": "static",
                                       "addresses": [{"address": f"{SERVER_IP}/24"}]},
               # The network's one DHCP server: replies from anyone else are dropped.
               "dhcpServers": [SERVER_IP]}
FORGE = os.path.join(os.path.dirname(__file__), "forge.py")


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    if not os.access(dhcp.DHCP_PLUGIN, os.X_OK):
        pytest.skip(f"{dhcp.DHCP_PLUGIN} missing (apt: containernetworking-plugins)")
    lab = lab_factory(hosts=3, network=None, bridge="ovs0")
    out = ctr.add_container(lab, "srv", "host1", netconf=SERVER_CONF)
    assert out.returncode == 0, out
    return lab


@pytest.fixture(scope="module")
def server(lab: Lab) -> dhcp.DhcpServer:
    return dhcp.start_server(lab.workdir, "srv", lab.containers["srv"]["netns"],
                             first=str(POOL[0]), last=str(POOL[1]), netmask="255.255.255.0",
                             router=SERVER_IP)


@pytest.fixture(scope="module")
def second_client(lab: Lab, server: dhcp.DhcpServer) -> dict[str, str]:
    """The same example netconf, on host2 (the lab's runtime, also in its host's mounts)."""
    out = ctr.add_container(lab, "c2", "host2", netconf=json.loads(EXAMPLE))
    assert out.returncode == 0, out
    return lab.containers["c2"]


@pytest.fixture
def client_netns(lab: Lab) -> Iterator[str]:
    name = f"{lab.prefix}-c0"
    add_netns(name)
    yield name
    del_netns(name)


def etcd_record(lab: Lab, container_id: str) -> dict[str, object] | None:
    out = run(lab.etcdctl("get", f"/overlay/v1/endpoints/pci/{container_id}/eth0",
                          "--print-value-only"), netns=lab.underlay_ns).stdout.strip()
    return json.loads(out) if out else None


def arp_answered_on(lab: Lab, h: LabHost, ip: str) -> bool:
    flows = run(["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "ovs0", "table=10"],
                env={"OVS_RUNDIR": h.ovs_dir}).stdout
    return f"arp_tpa={ip} " in flows or f"arp_tpa={ip}," in flows


def forge(netns: str, *args: str) -> None:
    subprocess.run(in_netns(netns, [sys.executable, FORGE, *args]), check=True, timeout=20)


def test_the_spec_example_through_libcni(lab: Lab, server: dhcp.DhcpServer,
                                         second_client: dict[str, str], libcni_driver: str,
                                         client_netns: str, tmp_path: Path) -> None:
    h0 = lab.hosts[0]
    conf = tmp_path / "pci.conf"
    conf.write_text(EXAMPLE)
    assert "agentSocket" not in EXAMPLE
    libcni = Libcni(libcni_driver, [lab.cni_bin, "/usr/lib/cni"], str(tmp_path / "cache"),
                    prefix=in_host_mounts(h0.dir, []))
    cid, netns_path = f"{lab.prefix}-c0", f"/var/run/netns/{client_netns}"
    before = host_snapshot(lab, h0)

    srv = lab.containers["srv"]
    offers = os.path.join(lab.workdir, "offers.pcap")
    tcpdump = capture(srv["netns"], "eth0", "udp port 68", 30, offers, direction="out")
    out = libcni(str(conf), "add", netns=netns_path, container_id=cid)
    tcpdump.terminate()
    tcpdump.wait()
    assert out.returncode == 0, str(out)
    result = out.json()

    # The 0.1.0 result: the leased ip4 with its gateway and the netconf's two routes.
    assert result["cniVersion"] == "0.1.0" and set(result) <= {"cniVersion", "ip4", "dns"}
    leased = ipaddress.ip_interface(result["ip4"]["ip"])
    assert POOL[0] <= leased.ip <= POOL[1] and leased.network.prefixlen == 24, result
    assert result["ip4"]["gateway"] == SERVER_IP
    assert result["ip4"]["routes"] == [{"dst": "10.3.0.0/16"}, {"dst": "10.4.0.0/16"}]

    # The lease is the server's (host1), for this container's MAC, and it is on eth0.
    mac = container_link(netns_path)["address"]
    # The server answered unicast to that MAC (dnsmasq does when the client does not ask for
    # broadcast): only the MAC's rule, from the record published before the lease, delivers it.
    answers = [f[:6] for f in pcap_frames(offers)]
    assert bytes.fromhex(mac.replace(":", "")) in answers, answers
    assert server.leases().get(mac) == str(leased.ip), server.leases()
    assert container_addresses(netns_path) == [str(leased)]
    routes = json.loads(run(["ip", "-j", "route", "show", "dev", "eth0"],
                            netns=client_netns).stdout)
    assert {(r["dst"], r.get("gateway")) for r in routes} >= {
        ("10.3.0.0/16", SERVER_IP), ("10.4.0.0/16", SERVER_IP)}, routes

    # The address reached etcd and every host's flows.
    rec = etcd_record(lab, cid)
    assert rec is not None and rec["ips"] == [str(leased)] and rec["mac"] == mac
    for h in lab.hosts:
        assert eventually(lambda h=h: arp_answered_on(lab, h, str(leased.ip))), h.name

    # Across hosts: the server on host1 and the second DHCP client on host2.
    assert eventually(lambda: ctr.ping(client_netns, SERVER_IP).ok)
    assert eventually(lambda: ctr.ping(client_netns, second_client["ip"]).ok)

    # CHECK (0.4.0: the first version with CHECK) knows the leased address.
    check_conf = json.loads(EXAMPLE) | {"cniVersion": "0.4.0"}
    checked = ctr.cni_exec(lab.cni_path, "CHECK", container_id=cid, netns=netns_path,
                           ifname="eth0", netconf=check_conf, host_dir=h0.dir)
    assert checked.returncode == 0, checked
    run(["ip", "addr", "del", str(leased), "dev", "eth0"], netns=client_netns)
    checked = ctr.cni_exec(lab.cni_path, "CHECK", container_id=cid, netns=netns_path,
                           ifname="eth0", netconf=check_conf, host_dir=h0.dir)
    assert checked.returncode != 0 and f"address {leased} is missing" in checked.json()["msg"]
    run(["ip", "addr", "add", str(leased), "dev", "eth0"], netns=client_netns)
    for dst in ("10.3.0.0/16", "10.4.0.0/16"):
        run(["ip", "route", "replace", dst, "via", SERVER_IP, "dev", "eth0"], netns=client_netns)

    # A DHCP client may not claim another container's address (c2's), by IP or by ARP.
    own_mac = mac
    srv_mac = container_link(f"/var/run/netns/{srv['netns']}")["address"]
    send = functools.partial(forge, client_netns)
    assert received(lab.workdir, srv["netns"], "dhcp-true", lambda: send(
        "icmp", own_mac, srv_mac, str(leased.ip), SERVER_IP, "dhcp-true"))
    assert not received(lab.workdir, srv["netns"], "dhcp-claims-c2", lambda: send(
        "icmp", own_mac, srv_mac, second_client["ip"], SERVER_IP, "dhcp-claims-c2"))
    assert not received(lab.workdir, srv["netns"], "dhcp-arp-c2", lambda: send(
        "arp-reply", own_mac, srv_mac, second_client["ip"], SERVER_IP, "dhcp-arp-c2"))
    # ... nor another unleased address in the pool.
    other = str(POOL[1]) if str(leased.ip) != str(POOL[1]) else str(POOL[0])
    assert not received(lab.workdir, srv["netns"], "dhcp-claims-pool", lambda: send(
        "icmp", own_mac, srv_mac, other, SERVER_IP, "dhcp-claims-pool"))

    # DEL releases the lease at the server and leaves nothing behind on host0.
    out = libcni(str(conf), "del", netns=netns_path, container_id=cid)
    assert out.returncode == 0, str(out)
    assert eventually(lambda: mac not in server.leases(), 10), server.leases()
    assert "DHCPRELEASE" in server.log_text()
    assert etcd_record(lab, cid) is None
    assert host_snapshot(lab, h0) == before


def test_bad_bridge_and_failed_lease_leave_nothing_behind(lab: Lab, server: dhcp.DhcpServer,
                                                           netns: str) -> None:
    h0 = lab.hosts[0]
    before = host_snapshot(lab, h0, netns)
    wrong = json.loads(EXAMPLE) | {"bridge": "br-int"}
    out = ctr.cni_exec(lab.cni_path, "ADD", container_id="bad-bridge", netns=netns,
                       ifname="eth0", netconf=wrong, host_dir=h0.dir)
    assert out.returncode != 0 and out.json()["code"] == 7, out
    assert "bridge 'br-int' is not managed" in out.json()["msg"] and "'ovs0'" in out.json()["msg"]
    # The dhcp daemon of host0 is down: the lease fails after link, port, record and flows
    # exist, and every one of them is undone.
    dhcp.stop_daemon(h0)
    try:
        out = ctr.cni_exec(lab.cni_path, "ADD", container_id="no-daemon", netns=netns,
                           ifname="eth0", netconf=json.loads(EXAMPLE), host_dir=h0.dir)
        assert out.returncode != 0 and "IPAM plugin dhcp" in out.json()["msg"], out
    finally:
        dhcp.start_daemon(h0)
    assert host_snapshot(lab, h0, netns) == before
    assert etcd_record(lab, "no-daemon") is None


def test_renewal_crosses_hosts(lab: Lab, server: dhcp.DhcpServer,
                               second_client: dict[str, str]) -> None:
    """The daemon renews at half the lease (1 of dnsmasq's minimum 2 minutes), from the leased
    address, to the server on another host; the server's ACK comes back and the address stays."""
    mac = container_link(f"/var/run/netns/{second_client['netns']}")["address"]

    def acks() -> int:
        return sum(1 for line in server.log_text().splitlines()
                   if "DHCPACK" in line and mac in line)
    assert acks() >= 1
    assert eventually(lambda: acks() >= 2, timeout=100), server.log_text()[-2000:]
    assert server.leases().get(mac) == second_client["ip"]
    assert eventually(lambda: ctr.ping(second_client["netns"], SERVER_IP).ok)
