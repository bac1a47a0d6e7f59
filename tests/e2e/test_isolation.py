"""Two networks with different VNIs and the same subnet on the same hosts stay apart."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import capture


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)  # my-net: VNI 42, 10.0.0.0/24
    ctr.define_network(lab, "blue-net", 43, "10.0.0.0/24")
    for name, host, net in (("a0", "host0", "my-net"), ("a1", "host1", "my-net"),
                            ("b0", "host0", "blue-net"), ("b1", "host1", "blue-net")):
        out = ctr.add_container(lab, name, host, net)
        assert out.returncode == 0, out.stdout
    ctr.wait_converged(lab)
    return lab


def test_addresses_overlap(lab: Lab) -> None:
    c = lab.containers
    assert c["a0"]["ip"] == c["b0"]["ip"] and c["a1"]["ip"] == c["b1"]["ip"]


def test_each_network_pings_inside_itself_and_nothing_crosses(lab: Lab) -> None:
    c = lab.containers
    b1_pcap = os.path.join(lab.workdir, "b1.pcap")
    # Whatever reaches b1 from outside while a0 talks in my-net (b1's own chatter aside).
    watcher = capture(c["b1"]["netns"], "eth0", "", 15, b1_pcap, direction="in")
    a_ping = run(["ping", "-c", "3", "-i", "0.2", "-W", "1", c["a1"]["ip"]],
                 netns=c["a0"]["netns"], check=False)
    # Broadcast too: an ARP request for an unknown address and a broadcast ping.
    run(["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.200"], netns=c["a0"]["netns"],
        check=False)
    run(["ping", "-b", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.255"], netns=c["a0"]["netns"],
        check=False)
    watcher.terminate()
    watcher.wait()
    assert a_ping.returncode == 0, a_ping.stdout
    seen = open(b1_pcap, "rb").read()[24:]  # skip the pcap global header
    assert seen == b"", "frames from my-net reached blue-net's b1"

    b_ping = run(["ping", "-c", "3", "-i", "0.2", "-W", "1", c["b1"]["ip"]],
                 netns=c["b0"]["netns"], check=False)
    assert b_ping.returncode == 0, b_ping.stdout
    # The answer to "who has a1's address" in my-net is a1's MAC, in blue-net b1's.
    a1_mac = run(["cat", "/sys/class/net/eth0/address"], netns=c["a1"]["netns"]).stdout.strip()
    b1_mac = run(["cat", "/sys/class/net/eth0/address"], netns=c["b1"]["netns"]).stdout.strip()
    assert a1_mac in run(["ip", "neigh"], netns=c["a0"]["netns"]).stdout
    assert b1_mac in run(["ip", "neigh"], netns=c["b0"]["netns"]).stdout
