"""A dual-stack network across two hosts: IPv4 and IPv6 both cross, IPv6 spoofing does not,
and network policy holds for IPv6 as for IPv4 (by label and port, ICMPv6 echo denied, egress to
an IPv6 CIDR), with neighbour discovery still working for the ports it polices."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from overlay.dataplane.flows import link_local
from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import eventually
from policy_lab import CLIENT, SERVER, apply, delete, outcome

RANGES = [[{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00:6::/64"}]]
V6: dict[str, str] = {}  # container -> its IPv6 address
MACS: dict[str, str] = {}  # container -> its MAC


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = lab_factory(hosts=2, network=None)
    ctr.define_network(lab, "dual", 60, "10.6.0.0/24")
    for h in lab.hosts:
        path = ctr.conflist_path(h, "dual")
        with open(path) as fh:
            conflist = json.load(fh)
        conflist["plugins"][0]["ipam"] = {"type": "overlay", "ranges": RANGES}
        with open(path, "w") as fh:
            json.dump(conflist, fh)
    servers = []
    for name, host, app in (("d0", "host0", "db"), ("d1", "host1", "web"),
                            ("d2", "host1", "other")):
        out = ctr.add_container(lab, name, host, "dual", labels={"app": app})
        assert out.returncode == 0, out.stdout
        v6 = [ip["address"] for ip in out.json()["ips"]][1]
        assert v6.startswith("fd00:6::")
        V6[name] = v6.split("/")[0]
        MACS[name] = next(i["mac"] for i in out.json()["interfaces"] if i.get("sandbox"))
        servers.append(subprocess.Popen(["ip", "netns", "exec", lab.containers[name]["netns"],
                                         "python3", "-c", SERVER, "22", "5432"]))
    ctr.wait_converged(lab)
    yield lab
    for proc in servers:
        proc.kill()
        proc.wait()


def test_ipv4_and_ipv6_cross_hosts(lab: Lab) -> None:
    src = lab.containers["d0"]["netns"]
    for target in ("10.6.0.2", "fd00:6::2"):
        proc = run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target], netns=src, check=False)
        assert proc.returncode == 0 and " 0% packet loss" in proc.stdout, proc.stdout


def test_ipv6_from_a_foreign_address_is_dropped(lab: Lab) -> None:
    src = lab.containers["d0"]["netns"]
    run(["ip", "-6", "addr", "add", "fd00:6::99/64", "dev", "eth0", "nodad"], netns=src)
    try:
        proc = run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", "fd00:6::99",
                    "fd00:6::2"], netns=src, check=False)
        assert proc.returncode != 0 and " 100% packet loss" in proc.stdout, proc.stdout
    finally:
        run(["ip", "-6", "addr", "del", "fd00:6::99/64", "dev", "eth0"], netns=src)


def tcp(lab: Lab, src: str, address: str, port: int) -> bool:
    return run(["python3", "-c", CLIENT, address, str(port)], netns=lab.containers[src]["netns"],
               check=False).returncode == 0


def ping(lab: Lab, src: str, address: str) -> bool:
    return run(["ping", "-c", "1", "-W", "1", address], netns=lab.containers[src]["netns"],
               check=False).returncode == 0


def forget_neighbours(lab: Lab, *names: str) -> None:
    """Flush the IPv6 neighbour caches: the next packet needs neighbour discovery again."""
    for name in names:
        run(["ip", "-6", "neigh", "flush", "dev", "eth0"], netns=lab.containers[name]["netns"],
            check=False)


def test_a_policy_allows_ipv6_by_label_and_port_and_denies_the_rest(lab: Lab) -> None:
    """db (d0, host0) accepts TCP 5432 from web (d1, host1) only: over IPv6 as over IPv4;
    d2 (other) is denied, ICMPv6 echo is denied, and neighbour discovery keeps working for d0
    (its caches and d1's flushed, the allowed connection still opens). Deleting the policy
    gives everything back."""
    db = V6["d0"]
    assert tcp(lab, "d2", db, 5432) and ping(lab, "d1", db)  # no policy: open
    doc = {"name": "db6", "endpointSelector": {"matchLabels": {"app": "db"}},
           "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432}]}]}
    apply(lab, doc, "dual")
    try:
        assert eventually(lambda: not tcp(lab, "d2", db, 5432)), "IPv6 from d2 not denied"
        forget_neighbours(lab, "d0", "d1")
        assert tcp(lab, "d1", db, 5432)           # the label and the port, over IPv6
        assert tcp(lab, "d1", lab.containers["d0"]["ip"], 5432)  # and over IPv4
        assert not tcp(lab, "d1", db, 22)         # another port
        assert not ping(lab, "d1", db)            # ICMPv6 echo is no port of the rule
        assert not ping(lab, "d2", db)
        assert ping(lab, "d0", V6["d1"])          # d0's own pings: its egress is not policed
        # Multicast too: an echo to all nodes (ff02::1) from d2 is answered by d1 (no policy
        # selects it), never by d0, whose rules judge its copy.
        out = run(["ping", "-6", "-c", "3", "-i", "0.3", "-w", "3", "-I", "eth0", "ff02::1"],
                  netns=lab.containers["d2"]["netns"], check=False).stdout
        assert link_local(MACS["d1"]) in out and link_local(MACS["d0"]) not in out, out
    finally:
        delete(lab, "db6", "dual")
    assert eventually(lambda: tcp(lab, "d2", db, 5432) and ping(lab, "d1", db))


def test_egress_to_an_ipv6_cidr(lab: Lab) -> None:
    """web (d1) may open TCP 5432 to d0's IPv6 address (a /128) and nothing else."""
    doc = {"name": "web6-out", "endpointSelector": {"matchLabels": {"app": "web"}},
           "policyTypes": ["Egress"],
           "egress": [{"to": [{"ipBlock": {"cidr": V6["d0"] + "/128"}}],
                       "ports": [{"protocol": "TCP", "port": 5432}]}]}
    apply(lab, doc, "dual")
    try:
        assert eventually(lambda: not tcp(lab, "d1", V6["d2"], 22)), "not in the CIDR"
        forget_neighbours(lab, "d1")
        assert tcp(lab, "d1", V6["d0"], 5432)
        assert not tcp(lab, "d1", V6["d0"], 22)
        assert not ping(lab, "d1", V6["d0"])
        assert not tcp(lab, "d1", lab.containers["d0"]["ip"], 5432)  # IPv4: not in the CIDR
        assert tcp(lab, "d2", V6["d1"], 22)          # d1's ingress is not policed
    finally:
        delete(lab, "web6-out", "dual")
    assert eventually(lambda: tcp(lab, "d1", V6["d2"], 22))


def test_a_reject_rule_answers_over_ipv6_as_over_ipv4(lab: Lab) -> None:
    """The sender sees the refusal over IPv6 too: ECONNREFUSED for TCP (a reset) and UDP
    (ICMPv6 port unreachable), "Administratively prohibited" for ping (ICMPv6 1/1). d0 serves
    TCP 22 and UDP 53 on IPv6: without the answers these would connect, not fail."""
    refused = str(errno.ECONNREFUSED)
    doc = {"name": "db6-reject", "endpointSelector": {"matchLabels": {"app": "db"}},
           "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                        "action": "reject"}]}
    assert outcome(lab, "d1", V6["d0"], "udp", 53) == "ok"  # no policy: served
    apply(lab, doc, "dual")
    try:
        assert eventually(lambda: outcome(lab, "d1", V6["d0"], "tcp", 22) == refused)
        assert outcome(lab, "d1", V6["d0"], "udp", 53) == refused
        proc = run(["ping", "-6", "-c", "1", "-W", "2", V6["d0"]],
                   netns=lab.containers["d1"]["netns"], check=False)
        assert "Administratively prohibited" in proc.stdout, proc.stdout
        assert outcome(lab, "d1", lab.containers["d0"]["ip"], "tcp", 22) == refused  # IPv4
        assert outcome(lab, "d2", V6["d0"], "tcp", 22) == "timeout"  # default deny: silent
    finally:
        delete(lab, "db6-reject", "dual")
    assert eventually(lambda: outcome(lab, "d1", V6["d0"], "tcp", 22) == "ok")
