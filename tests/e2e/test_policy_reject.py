"""`action: reject` end to end, through the real plugin, agents and switches of a two-host lab:
the sender sees the refusal (a TCP connect fails with ECONNREFUSED, a UDP socket reads
ECONNREFUSED, ping prints "Packet filtered"), in each direction, across hosts and on one host;
`drop` still times out; the refused packets never reach the destination and the answers reach
no one but the sender; a flood of refused SYNs gets no more answers than the meter lets
through; the rule's counters count every refused packet."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from overlay.lab import containers as ctr
from overlay.lab import faults
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import eventually
from policy_lab import SERVER, apply, delete, metric, outcome

# Sends N TCP SYNs to host:port from random source ports as fast as it can; prints the seconds.
FLOOD = """
import random, socket, struct, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    t = sum(struct.unpack(f"!{len(b)//2}H", b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
src = socket.inet_aton(sys.argv[4]); d = socket.inet_aton(dst)
start = time.monotonic()
for _ in range(n):
    h = struct.pack("!HHIIBBHHH", random.randint(20000, 60000), port, random.getrandbits(32),
                    0, 5 << 4, 2, 1024, 0, 0)
    h = h[:16] + struct.pack("!H", csum(src + d + struct.pack("!BBH", 0, 6, 20) + h)) + h[18:]
    s.sendto(h, (dst, 0))
print(time.monotonic() - start)
"""

ALLOW = {"name": "db-allow", "priority": 100, "endpointSelector": {"matchLabels": {"app": "db"}},
         "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                      "ports": [{"protocol": "TCP", "port": 5432}]}]}
DENY = {"name": "db-deny", "priority": 200, "endpointSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"protocol": "TCP", "port": 22}], "action": "drop"},
                    {"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                     "action": "reject"}]}
WEB_OUT = {"name": "web-out", "endpointSelector": {"matchLabels": {"app": "web"}},
           "policyTypes": ["Egress"],
           "egress": [{"ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}],
                       "action": "reject"},
                      {}]}
SERVERS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = lab_factory(hosts=2)
    for name, host, labels in (("db0", "host0", {"app": "db"}), ("web0", "host0", {"app": "web"}),
                               ("web1", "host1", {"app": "web"}),
                               ("other0", "host0", {"app": "other"})):
        out = ctr.add_container(lab, name, host, labels=labels)
        assert out.returncode == 0, out.stdout
        SERVERS.append(subprocess.Popen(["ip", "netns", "exec", lab.containers[name]["netns"],
                                         "python3", "-c", SERVER, "22", "80", "5432"]))
    ctr.wait_converged(lab)
    yield lab
    for proc in SERVERS:
        proc.kill()
        proc.wait()


def connect(lab: Lab, src: str, dst: str, proto: str, port: int) -> str:
    return outcome(lab, src, lab.containers[dst]["ip"], proto, port)


def ping(lab: Lab, src: str, dst: str) -> str:
    c = lab.containers
    out = run(["ping", "-c", "1", "-W", "2", c[dst]["ip"]], netns=c[src]["netns"], check=False)
    return out.stdout + out.stderr


class Capture:
    """tcpdump in a container's netns, for what it sees while the test runs."""

    def __init__(self, lab: Lab, name: str, expression: str) -> None:
        self._path = os.path.join(lab.workdir, f"reject-{name}.pcap")
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.containers[name]["netns"], "tcpdump", "-nli", "eth0",
             "-U", "-w", self._path, expression], stderr=subprocess.PIPE)
        assert self._proc.stderr is not None
        self._proc.stderr.readline()  # "listening on eth0 ...": it captures from now on

    def packets(self) -> list[str]:
        time.sleep(0.5)
        self._proc.terminate()
        self._proc.wait()
        return run(["tcpdump", "-nr", self._path], check=False).stdout.splitlines()


REFUSED = str(errno.ECONNREFUSED)


def test_1_ingress_reject_is_seen_by_the_sender_and_nothing_reaches_the_destination(
        lab: Lab) -> None:
    apply(lab, ALLOW)
    apply(lab, DENY)
    assert eventually(lambda: connect(lab, "web1", "db0", "tcp", 80) == REFUSED)
    c = lab.containers
    refused = "tcp port 80 or tcp port 22 or udp port 53 or icmp"
    at_db0 = Capture(lab, "db0", f"(src host {c['web1']['ip']} or src host {c['web0']['ip']}) "
                                 f"and ({refused})")
    bystander = Capture(lab, "other0", f"ip and host {c['db0']['ip']}")
    for src in ("web1", "web0"):  # across hosts (through the tunnel) and on one host
        assert connect(lab, src, "db0", "tcp", 80) == REFUSED, src
        assert connect(lab, src, "db0", "udp", 53) == REFUSED, src
        assert "Packet filtered" in ping(lab, src, "db0"), src
        assert connect(lab, src, "db0", "tcp", 22) == "timeout", src      # drop: silence
        assert connect(lab, src, "db0", "tcp", 5432) == "ok", src         # allowed
    assert at_db0.packets() == []     # neither the refused nor the dropped reached db0
    assert bystander.packets() == []  # and no answer went anywhere else


def test_2_rejects_count_in_the_rule_metrics_and_the_answers_by_kind(lab: Lab) -> None:
    assert connect(lab, "web1", "db0", "tcp", 80) == REFUSED
    assert eventually(lambda: metric(lab, "host0", "overlay_policy_rule_packets_total",
                                     policy="db-deny", direction="ingress", rule="1",
                                     action="reject") >= 1)
    for kind in ("tcp_reset", "port_unreachable", "admin_prohibited"):
        assert metric(lab, "host0", "overlay_policy_reject_answers_total",
                      direction="ingress", kind=kind) >= 1, kind
    assert metric(lab, "host1", "overlay_policy_reject_answers_total") == 0


def test_2b_trace_says_rejected_and_names_the_rule(lab: Lab) -> None:
    from overlay.lab.trace import lab_trace

    rejected = lab_trace(lab, "web1", "db0", ["--proto", "tcp", "--dport", "80"])
    assert rejected["kind"] == "rejected", rejected["verdict"]
    assert "rejected at table 90" in rejected["verdict"]
    assert "denied (reject) by policy db-deny, ingress rule 1" in rejected["verdict"]
    dropped = lab_trace(lab, "web1", "db0", ["--proto", "tcp", "--dport", "22"])
    assert dropped["kind"] == "dropped" and "dropped at table 90" in dropped["verdict"], dropped


def test_3_egress_reject_answers_at_the_source_and_the_packet_never_leaves(lab: Lab) -> None:
    delete(lab, "db-deny")
    apply(lab, WEB_OUT)
    assert eventually(lambda: connect(lab, "web1", "other0", "tcp", 80) == REFUSED)
    c = lab.containers
    at_other0 = Capture(lab, "other0", f"src host {c['web1']['ip']}")
    before = metric(lab, "host1", "overlay_policy_reject_answers_total", direction="egress")
    assert connect(lab, "web1", "other0", "udp", 53) == REFUSED
    assert connect(lab, "web1", "db0", "tcp", 80) == REFUSED   # db0 would allow it in: egress
    assert connect(lab, "web1", "other0", "tcp", 22) == "ok"   # the egress policy's allow-all
    assert not [line for line in at_other0.packets() if ".80:" in line or ".53:" in line]
    assert metric(lab, "host1", "overlay_policy_reject_answers_total",
                  direction="egress") - before >= 2
    delete(lab, "web-out")
    assert eventually(lambda: connect(lab, "web1", "other0", "tcp", 80) == "ok")


def meter_stats(lab: Lab, host: str) -> tuple[int, int, int, int]:
    """(rate, burst, packets through meter 20, packets its band dropped) on `host`'s br-int."""
    h = lab.host(host)
    env = {**os.environ, "OVS_RUNDIR": h.ovs_dir}
    conf = run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", "br-int"], netns=h.netns,
               env=env).stdout
    stats = run(["ovs-ofctl", "-O", "OpenFlow13", "meter-stats", "br-int"], netns=h.netns,
                env=env).stdout
    band = re.search(r"meter=20 pktps burst stats bands=\s*type=drop rate=(\d+) burst_size=(\d+)",
                     conf)
    counts = re.search(r"meter:20 flow_count:\d+ packet_in_count:(\d+) .*?0: packet_count:(\d+)",
                       stats, re.S)
    assert band and counts, conf + stats
    return int(band[1]), int(band[2]), int(counts[1]), int(counts[2])


def test_4_the_meter_bounds_the_answers_to_a_flood(lab: Lab) -> None:
    apply(lab, DENY)
    assert eventually(lambda: connect(lab, "web1", "db0", "tcp", 80) == REFUSED)
    rate, burst, metered_before, dropped_before = meter_stats(lab, "host0")
    answers_before = metric(lab, "host0", "overlay_policy_reject_answers_total")
    c, sent = lab.containers, 3000
    started = time.monotonic()
    run(["python3", "-c", FLOOD, c["db0"]["ip"], "80", str(sent), c["web1"]["ip"]],
        netns=c["web1"]["netns"])
    time.sleep(1.0)  # what is still queued reaches the meter, the answers go out
    _, _, metered, dropped = meter_stats(lab, "host0")
    elapsed = time.monotonic() - started  # the meter's whole window is inside this one
    answers = metric(lab, "host0", "overlay_policy_reject_answers_total") - answers_before
    passed = (metered - metered_before) - (dropped - dropped_before)
    bound = burst + rate * elapsed
    print(f"{sent} SYNs: {metered - metered_before} metered, {passed} to the agent, "
          f"{answers:.0f} answers in {elapsed:.2f} s (bound {bound:.0f} = {burst} + {rate}/s)")
    assert metered - metered_before > bound  # more reached the meter than it lets through
    assert 0 < passed <= bound and answers <= bound


def test_5_after_an_ovs_vswitchd_restart_the_meter_is_back_before_the_rules(lab: Lab) -> None:
    apply(lab, ALLOW)
    apply(lab, DENY)
    assert eventually(lambda: connect(lab, "web1", "db0", "tcp", 80) == REFUSED)
    h0 = lab.host("host0")
    log = os.path.join(h0.ovs_dir, "ovs-vswitchd.log")
    with open(log) as f:
        skip = len(f.readlines())
    faults.restart_vswitchd(h0)
    assert eventually(lambda: connect(lab, "web1", "db0", "tcp", 80) == REFUSED)  # answered again
    # The new ovs-vswitchd bound the reject rules to the meter: none was added without it, and
    # the refused packets go through it.
    with open(log) as f:
        unknown = [line for line in f.readlines()[skip:] if "unknown meter id" in line]
    assert unknown == []
    _, _, metered, _ = meter_stats(lab, "host0")
    assert metered >= 1
    delete(lab, "db-deny")
    delete(lab, "db-allow")
