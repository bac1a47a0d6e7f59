"""Broadcast and multicast under network policy, end to end (two hosts, the real plugin):
a policed port's ingress rules judge what the flood delivers to it, from the same host and
through the tunnel; an unpoliced port on the same network still gets everything; a policed
port's broadcast out is judged by its egress rules; ARP and the unicast rules are unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import eventually

NET, PORT, GROUP = "flood-net", 9999, "239.1.2.3"
# Prints every datagram it gets on PORT (broadcast, and the multicast group it joins), one
# per line, flushed: the test reads the file.
RECEIVER = f"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", {PORT}))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("{GROUP}"), socket.inet_aton(sys.argv[1])))
while True:
    data, _ = s.recvfrom(100)
    print(data.decode(), flush=True)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[3]))
for _ in range(3):
    s.sendto(sys.argv[2].encode(), (sys.argv[1], int(sys.argv[4])))
"""
# db0 accepts UDP PORT from app=web only (unicast, broadcast and multicast alike).
DB = {"name": "db", "endpointSelector": {"matchLabels": {"app": "db"}},
      "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                   "ports": [{"protocol": "UDP", "port": PORT}]}]}
RECEIVED: dict[str, str] = {}  # container -> the file its receiver writes


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = lab_factory(hosts=2, network=None)
    ctr.define_network(lab, NET, 71, "10.71.0.0/24")
    receivers = []
    for name, host, app in (("db0", "host0", "db"), ("free0", "host0", "free"),
                            ("other0", "host0", "other"), ("web1", "host1", "web"),
                            ("other1", "host1", "other")):
        out = ctr.add_container(lab, name, host, NET, labels={"app": app})
        assert out.returncode == 0, out.stdout
        if name in ("db0", "free0"):
            RECEIVED[name] = os.path.join(lab.workdir, f"{name}-{uuid.uuid4().hex[:6]}.txt")
            with open(RECEIVED[name], "w") as sink:
                receivers.append(subprocess.Popen(
                    ["ip", "netns", "exec", lab.containers[name]["netns"], "python3", "-c",
                     RECEIVER, lab.containers[name]["ip"]], stdout=sink))
    ctr.wait_converged(lab)
    yield lab
    for proc in receivers:
        proc.kill()
        proc.wait()


def send(lab: Lab, src: str, to: str, tag: str) -> None:
    c = lab.containers[src]
    run(["python3", "-c", SENDER, to, tag, c["ip"], str(PORT)], netns=c["netns"])


def got(name: str, tag: str) -> bool:
    with open(RECEIVED[name]) as fh:
        return tag in fh.read().split()


def delivered(lab: Lab, src: str, to: str, *, expect: dict[str, bool]) -> None:
    """Send a tagged datagram from `src` to `to` (broadcast, subnet broadcast or the group):
    each receiver named in `expect` gets it (True) or never does (False)."""
    tag = f"{src}-{to}-{uuid.uuid4().hex[:6]}"
    send(lab, src, to, tag)
    for name, wanted in expect.items():
        if wanted:
            assert eventually(lambda n=name: got(n, tag), timeout=5), f"{name} did not get {tag}"
    for name, wanted in expect.items():
        if not wanted:  # given the time the others took, and more
            assert not eventually(lambda n=name: got(n, tag), timeout=1.5), f"{name} got {tag}"


def policy(lab: Lab, *args: str, doc: dict[str, object] | None = None) -> None:
    out = run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
               "policy", *args], netns=lab.underlay_ns, check=False,
              input=json.dumps(doc).encode() if doc is not None else None)
    assert out.returncode == 0, out.stdout + out.stderr


def ping(lab: Lab, src: str, dst: str) -> bool:
    c = lab.containers
    return run(["ping", "-c", "1", "-W", "1", c[dst]["ip"]], netns=c[src]["netns"],
               check=False).returncode == 0


TARGETS = ("255.255.255.255", "10.71.0.255", GROUP)


def test_1_without_policy_everyone_gets_the_broadcast(lab: Lab) -> None:
    for to in TARGETS:
        delivered(lab, "other1", to, expect={"db0": True, "free0": True})


def test_2_ingress_rules_judge_broadcast_and_multicast_to_a_policed_port(lab: Lab) -> None:
    policy(lab, "apply", "-f", "-", "--network", NET, doc=DB)
    assert eventually(lambda: not ping(lab, "web1", "db0"))  # in force (ICMP is no UDP)
    for to in TARGETS:
        # Through the tunnel: denied peer, then allowed peer; free0 gets both.
        delivered(lab, "other1", to, expect={"db0": False, "free0": True})
        delivered(lab, "web1", to, expect={"db0": True, "free0": True})
        # From the same host (the flood of table 20, not 30).
        delivered(lab, "other0", to, expect={"db0": False, "free0": True})
    # ARP still works for the policed port: its neighbours forgotten, unicast allowed again.
    run(["ip", "neigh", "flush", "dev", "eth0"], netns=lab.containers["db0"]["netns"])
    assert ping(lab, "db0", "free0") and ping(lab, "db0", "web1")


def test_3_egress_rules_judge_a_policed_ports_broadcast(lab: Lab) -> None:
    """other0's egress allows UDP PORT to 255.255.255.255 only: its limited broadcast goes
    out, its subnet broadcast and multicast do not (no rule names them)."""
    out = {"name": "bcast-out", "endpointSelector": {"matchLabels": {"app": "other"}},
           "policyTypes": ["Egress"],
           "egress": [{"to": [{"ipBlock": {"cidr": "255.255.255.255/32"}}],
                       "ports": [{"protocol": "UDP", "port": PORT}]}]}
    policy(lab, "apply", "-f", "-", "--network", NET, doc=out)
    try:
        assert eventually(lambda: not ping(lab, "other0", "free0"))
        delivered(lab, "other0", "255.255.255.255", expect={"free0": True, "db0": False})
        delivered(lab, "other0", "10.71.0.255", expect={"free0": False})
        delivered(lab, "other0", GROUP, expect={"free0": False})
    finally:
        policy(lab, "delete", "bcast-out", "--network", NET)
    policy(lab, "delete", "db", "--network", NET)
    assert eventually(lambda: ping(lab, "web1", "db0"))
    delivered(lab, "other1", "255.255.255.255", expect={"db0": True, "free0": True})


def test_4_a_policed_senders_repeated_datagrams_to_a_port_that_denies_it_stay_denied(
        lab: Lab) -> None:
    """other0 (host0) is policed (egress: allow everything), db0 (host0) accepts UDP PORT from
    app=web only: each of other0's datagrams to db0, the third of one socket included (by
    then conntrack holds the flow other0's egress committed), is judged by db0's rules."""
    everything = {"name": "other-out", "endpointSelector": {"matchLabels": {"app": "other"}},
                  "policyTypes": ["Egress"], "egress": [{}]}
    policy(lab, "apply", "-f", "-", "--network", NET, doc=DB)
    policy(lab, "apply", "-f", "-", "--network", NET, doc=everything)
    try:
        assert eventually(lambda: not ping(lab, "web1", "db0"))
        db0 = lab.containers["db0"]["ip"]
        delivered(lab, "web1", db0, expect={"db0": True})
        delivered(lab, "other0", db0, expect={"db0": False})
        delivered(lab, "other0", db0, expect={"db0": False})
    finally:
        policy(lab, "delete", "other-out", "--network", NET)
        policy(lab, "delete", "db", "--network", NET)
