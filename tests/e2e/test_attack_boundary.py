"""Issue 15, point 5: what a container can do to its neighbours and to its host, done for real.

Forged frames leave a container's eth0 through an AF_PACKET socket (forge.py); a capture in the
receiving container tells whether they arrived. Every dropped forgery has a twin that differs
only in what makes it a forgery and does arrive, so "dropped" is told from "never sent".

Network `edge` (VNI 70, dual stack, static IPAM) has e0 and srv on host0 and e1 on host1; its
netconf names srv as its DHCP server. Network my-net (with its gateway) has c0 on host0, and
network `other` (VNI 71) has o0 on host0 too.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import overlay_fixtures as fixtures
from overlay.dataplane.flows import link_local
from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import eventually

FORGE = os.path.join(os.path.dirname(__file__), "forge.py")
EDGE = {"e0": ("host0", "2"), "e1": ("host1", "3"), "srv": ("host0", "4")}
ALL_NODES = ("33:33:00:00:00:01", "ff02::1")
METRICS_PORT = 10390


def edge_conf(last: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "edge", "type": "ovs", "vxlanID": 70,
            "ipam": {"type": "static", "addresses": [{"address": f"10.7.0.{last}/24"},
                                                     {"address": f"fd00:7::{last}/64"}]},
            "dhcpServers": ["10.7.0.4", "fd00:7::4"]}


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    for name, (host, last) in EDGE.items():
        out = ctr.add_container(lab, name, host, netconf=edge_conf(last))
        assert out.returncode == 0, out
    assert ctr.add_container(lab, "c0", "host0").returncode == 0
    ctr.define_network(lab, "other", 71, "10.8.0.0/24")
    assert ctr.add_container(lab, "o0", "host0", "other").returncode == 0
    ctr.wait_converged(lab)
    return lab


def mac_of(lab: Lab, name: str) -> str:
    return run(["cat", "/sys/class/net/eth0/address"],
               netns=lab.containers[name]["netns"]).stdout.strip()


def v6(name: str) -> str:
    return f"fd00:7::{EDGE[name][1]}"


def v4(name: str) -> str:
    return f"10.7.0.{EDGE[name][1]}"


def forge(lab: Lab, sender: str, *args: str) -> None:
    subprocess.run(in_netns(lab.containers[sender]["netns"], [sys.executable, FORGE, *args]),
                   check=True, timeout=20)


def arrives(lab: Lab, sender: str, receiver: str, marker: str, *args: str) -> bool:
    return fixtures.received(lab.workdir, lab.containers[receiver]["netns"], marker,
                             functools.partial(forge, lab, sender, *args, marker))


# --- IPv6 neighbour discovery ------------------------------------------------------------------

def test_the_kernels_own_neighbour_discovery_still_works(lab: Lab) -> None:
    e0 = lab.containers["e0"]["netns"]
    # Its link-local address is the one the flows admit (EUI-64 of its MAC), and DAD is over.
    addrs = json.loads(run(["ip", "-j", "-6", "addr", "show", "dev", "eth0"], netns=e0).stdout)
    infos = addrs[0]["addr_info"]
    assert any(a["local"] == link_local(mac_of(lab, "e0")) for a in infos), infos
    assert eventually(lambda: not any(
        a.get("tentative") or a.get("dadfailed")
        for a in json.loads(run(["ip", "-j", "-6", "addr", "show", "dev", "eth0"],
                                netns=e0).stdout)[0]["addr_info"]))
    # Resolution by NS/NA, across hosts, to the global and the link-local address.
    run(["ip", "-6", "neigh", "flush", "dev", "eth0"], netns=e0)
    for target in (v6("e1"), f"{link_local(mac_of(lab, 'e1'))}%eth0"):
        proc = run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", target], netns=e0,
                   check=False)
        assert proc.returncode == 0, (target, proc.stdout)


def test_advertisements_speak_only_for_the_sender(lab: Lab) -> None:
    own, e1_mac, srv_mac = mac_of(lab, "e0"), mac_of(lab, "e1"), mac_of(lab, "srv")
    own_ll = link_local(own)
    # Unsolicited NA to e1, and to every node: its own address and MAC arrive ...
    assert arrives(lab, "e0", "e1", "na-own", "nd", "na", own, e1_mac, v6("e0"), v6("e1"),
                   v6("e0"), own)
    assert arrives(lab, "e0", "e1", "na-own-ll", "nd", "na", own, ALL_NODES[0], own_ll,
                   ALL_NODES[1], own_ll, "-")
    # ... srv's address (the neighbour-cache poisoning that takes srv's traffic) does not,
    assert not arrives(lab, "e0", "e1", "na-srv", "nd", "na", own, e1_mac, v6("e0"), v6("e1"),
                       v6("srv"), own)
    assert not arrives(lab, "e0", "e1", "na-srv-all", "nd", "na", own, ALL_NODES[0], own_ll,
                       ALL_NODES[1], v6("srv"), own)
    # ... nor its own address with srv's MAC as the link-layer address,
    assert not arrives(lab, "e0", "e1", "na-mac", "nd", "na", own, e1_mac, v6("e0"), v6("e1"),
                       v6("e0"), srv_mac)
    # ... nor a solicitation that gives another MAC as its own.
    assert arrives(lab, "e0", "e1", "ns-own", "nd", "ns", own, e1_mac, v6("e0"), v6("e1"),
                   v6("e1"), own)
    assert not arrives(lab, "e0", "e1", "ns-mac", "nd", "ns", own, e1_mac, v6("e0"), v6("e1"),
                       v6("e1"), srv_mac)


def test_a_container_sends_no_router_advertisement_or_redirect(lab: Lab) -> None:
    own, e1_mac = mac_of(lab, "e0"), mac_of(lab, "e1")
    own_ll = link_local(own)
    assert not arrives(lab, "e0", "e1", "ra", "nd", "ra", own, ALL_NODES[0], own_ll,
                       ALL_NODES[1], "::", own)
    assert not arrives(lab, "e0", "e1", "redirect", "nd", "redirect", own, e1_mac, own_ll,
                       link_local(e1_mac), own_ll, own)
    # A solicitation with the same addresses does arrive (the frames are deliverable).
    assert arrives(lab, "e0", "e1", "ns-ll", "nd", "ns", own, e1_mac, own_ll,
                   link_local(e1_mac), link_local(e1_mac), own)


def test_duplicate_address_detection_only_for_its_own_addresses(lab: Lab) -> None:
    own = mac_of(lab, "e0")

    def dad(target: str) -> tuple[str, ...]:
        # From ::, to the target's solicited-node multicast group, no link-layer option.
        group = "ff02::1:ff00:" + target.rsplit(":", 1)[1]
        return ("nd", "ns", own, "33:33:ff:00:00:" + f"{int(target.rsplit(':', 1)[1], 16):02x}",
                "::", group, target, "-")
    assert arrives(lab, "e0", "e1", "dad-own", *dad(v6("e0")))
    # Probing e1's address would make e1's own DAD for it fail if it were new: dropped.
    assert not arrives(lab, "e0", "e1", "dad-other", *dad(v6("e1")))


# --- DHCP servers --------------------------------------------------------------------------

def test_dhcp_replies_only_from_the_named_server(lab: Lab) -> None:
    e1_mac = mac_of(lab, "e1")
    bcast = "ff:ff:ff:ff:ff:ff"
    for sender, expected in (("srv", True), ("e0", False)):
        mac = mac_of(lab, sender)
        # A broadcast OFFER (server 67 -> client 68), from the sender's own address.
        assert arrives(lab, sender, "e1", f"offer-{sender}", "udp", mac, bcast, v4(sender),
                       "255.255.255.255", "67", "68") is expected, sender
        # DHCPv6: server 547 -> client 546, from the link-local address.
        assert arrives(lab, sender, "e1", f"v6reply-{sender}", "udp", mac, e1_mac,
                       link_local(mac), link_local(e1_mac), "547", "546") is expected, sender
    # The rogue server may still send other UDP from its address (only the server role is
    # taken away).
    assert arrives(lab, "e0", "e1", "udp-e0", "udp", mac_of(lab, "e0"), e1_mac, v4("e0"),
                   v4("e1"), "6767", "6868")


# --- the host's own listeners --------------------------------------------------------------

def connects(netns: str, ip: str, port: int) -> bool:
    code = ("import socket,sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
            "except OSError:\n sys.exit(1)\n")
    return run(["python3", "-c", code, ip, str(port)], netns=netns, check=False,
               timeout=20).returncode == 0


@pytest.fixture
def host_listener(lab: Lab) -> Iterator[int]:
    """A TCP service on every address of host0, as an sshd or a misconfigured exporter."""
    port = 18081
    h0 = lab.host("host0")
    code = ("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,"
            f"socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(16)\n"
            "while True:\n c,_=s.accept(); c.close()\n")
    proc = subprocess.Popen(in_netns(h0.netns, ["python3", "-c", code]))
    try:
        assert eventually(lambda: connects(h0.netns, "127.0.0.1", port))
        yield port
    finally:
        proc.terminate()
        proc.wait()


def test_a_container_does_not_reach_the_agents_metrics_or_host_services(
        lab: Lab, host_listener: int) -> None:
    h0, c0 = lab.host("host0"), lab.containers["c0"]["netns"]
    gateway = "10.0.0.1"
    assert lab.agent_http(h0, "/healthz")[0] == 200  # the host itself reaches its metrics
    for address in (gateway, h0.vtep):
        assert not connects(c0, address, METRICS_PORT), address
        # Even a service listening on every host address is out of the container's reach
        # (the INPUT rule of its gateway port), though the host reaches it there.
        assert connects(h0.netns, address, host_listener), address
        assert not connects(c0, address, host_listener), address
    # The gateway itself still answers a ping, and the host still reaches the container.
    assert ctr.ping(c0, gateway).ok
    assert ctr.ping(h0.netns, lab.containers["c0"]["ip"]).ok


def test_a_silent_client_does_not_block_the_metrics_server(lab: Lab) -> None:
    h0 = lab.host("host0")
    code = ("import socket,sys,time\n"
            f"s=[socket.create_connection(('127.0.0.1',{METRICS_PORT})) for _ in range(8)]\n"
            "print('holding',flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen(in_netns(h0.netns, ["python3", "-c", code]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert lab.agent_http(h0, "/healthz") == (200, "ok\n")
        assert lab.agent_http(h0, "/metrics")[0] == 200
        assert holder.poll() is None  # the silent clients were connected all along
    finally:
        holder.terminate()
        holder.wait()


# --- separation between networks in the host kernel ----------------------------------------

def doctor(lab: Lab, h: LabHost) -> subprocess.CompletedProcess[str]:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                "doctor", "--socket", h.socket], netns=lab.underlay_ns, check=False)


def test_a_foreign_accept_at_the_top_of_forward_does_not_join_networks(lab: Lab) -> None:
    h0 = lab.host("host0")
    c0, o0 = lab.containers["c0"], lab.containers["o0"]
    # Both reach the outside through their gateways on host0 ...
    assert ctr.ping(c0["netns"], "10.0.0.1").ok and ctr.ping(o0["netns"], "10.8.0.1").ok
    foreign = ["iptables", "-w", "-I", "FORWARD", "1", "-j", "ACCEPT"]
    run(foreign, netns=h0.netns)
    try:
        # ... and another tool's ACCEPT above our FORWARD rules opens nothing between them.
        assert not ctr.ping(c0["netns"], o0["ip"], 2).ok
        assert not ctr.ping(o0["netns"], c0["ip"], 2).ok
        assert "isolation" not in doctor(lab, h0).stdout
        # Someone removes a routing rule of the separation: doctor says so, and the agent's
        # periodic check puts it back.
        run(["ip", "rule", "del", "priority", "98", "iif", "ovg42"], netns=h0.netns)
        assert "isolation" in doctor(lab, h0).stdout
        assert eventually(lambda: "isolation" not in doctor(lab, h0).stdout, 45)
        assert not ctr.ping(c0["netns"], o0["ip"], 2).ok
    finally:
        run(["iptables", "-w", "-D", "FORWARD", "-j", "ACCEPT"], netns=h0.netns, check=False)
