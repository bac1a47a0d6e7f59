"""The lab, two hosts: containers on different hosts talk over OVS VXLAN with the netconf's VNI."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import pytest

from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import capture, vxlan_vnis, with_c0_and_c1


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


def ping(lab: Lab, src: str, dst_ip: str, count: int = 3) -> tuple[bool, str]:
    proc = run(["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst_ip],
               netns=lab.containers[src]["netns"], check=False)
    return proc.returncode == 0, proc.stdout


def test_cross_host_ping_both_ways_without_loss(lab: Lab) -> None:
    for src, dst in (("c0", "c1"), ("c1", "c0")):
        ok, out = ping(lab, src, lab.containers[dst]["ip"])
        assert ok, out
        assert " 0% packet loss" in out, out


def test_vxlan_with_the_netconf_vni_is_on_the_underlay(lab: Lab) -> None:
    pcap = os.path.join(lab.workdir, "underlay.pcap")
    proc = capture(lab.underlay_ns, f"{lab.prefix}u0", "udp port 4789", 10, pcap)
    ok, out = ping(lab, "c0", lab.containers["c1"]["ip"], count=2)
    proc.terminate()
    proc.wait()
    assert ok, out
    vnis = vxlan_vnis(pcap)
    print(f"VXLAN packets on the underlay: {len(vnis)}, VNIs: {sorted(set(vnis))}")
    assert len(vnis) >= 4  # two requests and two replies, at least
    assert set(vnis) == {42}


def test_tcp_across_hosts(lab: Lab) -> None:
    server = lab.containers["c1"]
    srv = run(["iperf3", "-s", "-1", "-D", "-I", os.path.join(lab.workdir, "iperf.pid")],
              netns=server["netns"])
    assert srv.returncode == 0
    try:
        out = run(["iperf3", "-c", server["ip"], "-t", "2", "-J"],
                  netns=lab.containers["c0"]["netns"], timeout=30)
        report = json.loads(out.stdout)
        received = report["end"]["sum_received"]
        print(f"TCP c0 -> c1 across hosts: {received['bits_per_second'] / 1e6:.0f} Mbit/s")
        assert received["bytes"] > 1_000_000
    finally:
        run(["pkill", "-f", f"iperf3 -s -1 -D -I {lab.workdir}"], check=False)


def test_arp_is_answered_by_ovs_not_flooded(lab: Lab) -> None:
    # c0 learns c1's MAC from the flow table's ARP responder; the request never crosses.
    run(["ip", "neigh", "flush", "all"], netns=lab.containers["c0"]["netns"])
    pcap = os.path.join(lab.workdir, "arp.pcap")
    proc = capture(lab.underlay_ns, f"{lab.prefix}u0", "udp port 4789", 10, pcap)
    ok, out = ping(lab, "c0", lab.containers["c1"]["ip"], count=1)
    proc.terminate()
    proc.wait()
    assert ok, out
    neigh = run(["ip", "neigh", "show", lab.containers["c1"]["ip"]],
                netns=lab.containers["c0"]["netns"]).stdout
    c1_mac = run(["cat", "/sys/class/net/eth0/address"], netns=lab.containers["c1"]["netns"])
    assert c1_mac.stdout.strip() in neigh
    assert len(vxlan_vnis(pcap)) == 2  # the ICMP echo and its reply, no ARP
    frames = open(pcap, "rb").read()
    assert not re.search(rb"\xff\xff\xff\xff\xff\xff", frames[24:])  # no broadcast inside
