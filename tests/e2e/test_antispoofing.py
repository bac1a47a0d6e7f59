"""Anti-spoofing with forged frames: a container may only send with its own MAC and IP, and may
not answer ARP for an address that is not its own. A frame built the same way with the true
addresses does arrive, so the test can tell "dropped" from "never sent"."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

import overlay_fixtures as fixtures
from overlay.lab import containers as ctr
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab

FORGE = os.path.join(os.path.dirname(__file__), "forge.py")


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    for name, host in (("c0", "host0"), ("c1", "host1"), ("c2", "host0")):
        assert ctr.add_container(lab, name, host).returncode == 0
    ctr.wait_converged(lab)
    return lab


def mac_of(lab: Lab, name: str) -> str:
    return run(["cat", "/sys/class/net/eth0/address"],
               netns=lab.containers[name]["netns"]).stdout.strip()


def received(lab: Lab, receiver: str, marker: str, send: Callable[[], None]) -> bool:
    return fixtures.received(lab.workdir, lab.containers[receiver]["netns"], marker, send)


def forge(lab: Lab, sender: str, *args: str) -> None:
    subprocess.run(in_netns(lab.containers[sender]["netns"], [sys.executable, FORGE, *args]),
                   check=True, timeout=20)


@pytest.mark.parametrize("receiver", ["c1", "c2"], ids=["other-host", "same-host"])
def test_forged_sources_are_dropped_true_ones_pass(lab: Lab, receiver: str) -> None:
    c0, dst = lab.containers["c0"], lab.containers[receiver]
    own_mac, dst_mac = mac_of(lab, "c0"), mac_of(lab, receiver)
    cases = {
        "control-true": (own_mac, c0["ip"], True),
        "forged-ip": (own_mac, "10.0.0.99", False),
        "forged-mac": ("02:de:ad:be:ef:01", c0["ip"], False),
        "forged-both": ("02:de:ad:be:ef:01", "10.0.0.99", False),
    }
    for marker, (src_mac, src_ip, expected) in cases.items():
        tag = f"{marker}-{receiver}"
        got = received(lab, receiver, tag, functools.partial(
            forge, lab, "c0", "icmp", src_mac, dst_mac, src_ip, dst["ip"], tag))
        assert got is expected, f"{marker}: arrived={got}"


def test_arp_answers_for_foreign_addresses_are_dropped(lab: Lab) -> None:
    own_mac, c1_mac = mac_of(lab, "c0"), mac_of(lab, "c1")
    c0, c2 = lab.containers["c0"], lab.containers["c2"]
    # c0 claims c2's address to c1: the classic ARP spoof. Dropped.
    assert not received(lab, "c1", "arp-foreign", lambda: forge(
        lab, "c0", "arp-reply", own_mac, c1_mac, c2["ip"], lab.containers["c1"]["ip"],
        "arp-foreign"))
    # Replies are not forwarded at all (requests are answered by OVS), even truthful ones.
    assert not received(lab, "c1", "arp-own", lambda: forge(
        lab, "c0", "arp-reply", own_mac, c1_mac, c0["ip"], lab.containers["c1"]["ip"],
        "arp-own"))
    # And c1 still resolves c0 to c0's real MAC.
    run(["ip", "neigh", "flush", "all"], netns=lab.containers["c1"]["netns"])
    assert ctr.ping(lab.containers["c1"]["netns"], c0["ip"]).ok
    neigh = run(["ip", "neigh", "show", c0["ip"]], netns=lab.containers["c1"]["netns"]).stdout
    assert own_mac in neigh
