"""Network policy end to end, through the real plugin, agents and switches of a two-host lab:
who may talk to whom by labels and ports, enforced in OVS at the destination (ingress) and
at the source (egress), with live changes and deletion."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import eventually
from policy_lab import CLIENT, SERVER, apply, delete, metric

# Each container serves these TCP ports (one line, "ok", per connection) and UDP 53 (echo).
PORTS = (22, 80, 5432)

DB = {"name": "db", "endpointSelector": {"matchLabels": {"app": "db"}},
      "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                   "ports": [{"protocol": "TCP", "port": 5432}]}]}


SERVERS: dict[str, subprocess.Popen[bytes]] = {}  # container -> its server, while the module runs


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = lab_factory(hosts=2)
    ctr.define_network(lab, "blue-net", 43, "10.0.0.0/24")
    for name, host, net, labels in (("db0", "host0", "my-net", {"app": "db"}),
                                    ("web1", "host1", "my-net", {"app": "web"}),
                                    ("other1", "host1", "my-net", {"app": "other"}),
                                    ("blue0", "host0", "blue-net", {"app": "db"}),
                                    ("blue1", "host1", "blue-net", {"app": "web"})):
        out = ctr.add_container(lab, name, host, net, labels=labels)
        assert out.returncode == 0, out.stdout
        serve(lab, name)
    ctr.wait_converged(lab)
    yield lab
    for proc in SERVERS.values():
        proc.kill()
        proc.wait()


def serve(lab: Lab, name: str) -> None:
    """(Re)start the servers of container `name` (after it was re-added, in a new netns)."""
    old = SERVERS.pop(name, None)
    if old is not None:
        old.kill()
        old.wait()
    netns = lab.containers[name]["netns"]
    SERVERS[name] = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", SERVER,
                                      *map(str, PORTS)])


def readd(lab: Lab, name: str, host: str, labels: dict[str, str]) -> None:
    """DEL and ADD again with other labels: how a container's labels change."""
    assert ctr.del_container(lab, name).returncode == 0
    out = ctr.add_container(lab, name, host, labels=labels)
    assert out.returncode == 0, out.stdout
    serve(lab, name)
    ctr.wait_converged(lab)


def tcp(lab: Lab, src: str, dst: str, port: int) -> bool:
    c = lab.containers
    return run(["python3", "-c", CLIENT, c[dst]["ip"], str(port)], netns=c[src]["netns"],
               check=False).returncode == 0


def ping(lab: Lab, src: str, dst: str) -> bool:
    c = lab.containers
    return run(["ping", "-c", "1", "-W", "1", c[dst]["ip"]], netns=c[src]["netns"],
               check=False).returncode == 0


def test_1_allow_by_label_and_port_across_hosts_everything_else_denied(lab: Lab) -> None:
    assert tcp(lab, "other1", "db0", 5432) and ping(lab, "web1", "db0")  # no policy: open
    apply(lab, DB)
    assert eventually(lambda: not tcp(lab, "other1", "db0", 5432))
    assert tcp(lab, "web1", "db0", 5432)        # the label and the port
    assert not tcp(lab, "web1", "db0", 22)      # the label, another port
    assert not ping(lab, "web1", "db0")         # ICMP is no port of the rule
    assert not ping(lab, "other1", "db0")
    # db0 polices its ingress only: what it starts itself passes, and so do the replies.
    assert ping(lab, "db0", "web1") and tcp(lab, "db0", "other1", 80)
    # Nobody selects web1 and other1: they still talk freely.
    assert tcp(lab, "other1", "web1", 80) and ping(lab, "web1", "other1")


def state(lab: Lab) -> str:
    """For a failure message: each agent's last log lines and host0's ingress policy table."""
    out = []
    for h in lab.hosts:
        with open(h.agent_log, errors="replace") as fh:
            out.append(f"--- {h.name} agent log\n" + "".join(fh.readlines()[-30:]))
    dump = run(["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", "table=90"],
               netns=lab.host("host0").netns, check=False,
               env={**os.environ, "OVS_RUNDIR": lab.host("host0").ovs_dir})
    return "\n".join(out) + "\n--- host0 table 90\n" + dump.stdout + dump.stderr


def test_1b_rule_counters_and_the_audit_log_of_denied_connections(lab: Lab) -> None:
    c = lab.containers
    db0_key = f"my-net/{c['db0']['container_id']}/eth0"
    assert tcp(lab, "web1", "db0", 5432) and not tcp(lab, "other1", "db0", 5432)
    assert eventually(lambda: metric(lab, "host0", "overlay_policy_rule_packets_total",
                                     policy="db", direction="ingress", rule="0",
                                     action="allow") >= 1)
    assert eventually(lambda: metric(lab, "host0", "overlay_policy_denied_packets_total",
                                     direction="ingress", endpoint=db0_key) >= 1)
    # Nothing was denied on host1 (web1 and other1 are not policed).
    assert metric(lab, "host1", "overlay_policy_denied_packets_total") == 0
    with open(lab.host("host0").agent_log) as f:
        assert eventually(lambda: any(f"denied ingress {db0_key}" in line for line in f))


def test_1c_trace_names_the_policy_and_rule_that_decided(lab: Lab) -> None:
    from overlay.lab.trace import lab_trace

    tcp5432 = ["--proto", "tcp", "--dport", "5432"]
    allowed = lab_trace(lab, "web1", "db0", tcp5432)
    assert allowed["kind"] == "delivered", allowed["verdict"]
    assert "ingress policy of" in allowed["verdict"]
    assert "allowed by policy db, ingress rule 0" in allowed["verdict"]
    assert any(s["table"] == 90 for s in allowed["hops"][-1]["steps"])
    denied = lab_trace(lab, "other1", "db0", tcp5432)
    assert denied["kind"] == "dropped", denied["verdict"]
    assert "default deny" in denied["verdict"] and "table 90" in denied["verdict"]


def test_2_isolation_between_networks_is_unchanged(lab: Lab) -> None:
    # blue-net has the same subnet and the same labels but no policy: my-net's db policy does
    # not reach it (port 22 is open there), while it holds in my-net meanwhile.
    assert lab.containers["blue0"]["ip"] == lab.containers["db0"]["ip"]
    assert tcp(lab, "blue1", "blue0", 22) and ping(lab, "blue1", "blue0")
    assert not tcp(lab, "web1", "db0", 22) and tcp(lab, "web1", "db0", 5432)


def test_3_priority_and_a_drop_rule_beat_an_allow(lab: Lab) -> None:
    deny_web = {"name": "deny-web", "priority": 10,
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                             "action": "drop"}]}
    apply(lab, deny_web)
    assert eventually(lambda: not tcp(lab, "web1", "db0", 5432))
    # Same priority as db's allow (1000): drop still ranks first at equal priority.
    apply(lab, {**deny_web, "priority": 1000})
    assert not tcp(lab, "web1", "db0", 5432)
    # Below the allow (a larger number is evaluated later): the allow decides again.
    apply(lab, {**deny_web, "priority": 2000})
    assert eventually(lambda: tcp(lab, "web1", "db0", 5432))
    delete(lab, "deny-web")


def test_4_egress_to_a_cidr(lab: Lab) -> None:
    web1 = lab.containers["web1"]["ip"]
    egress = {"name": "web-out", "endpointSelector": {"matchLabels": {"app": "web"}},
              "policyTypes": ["Egress"],
              "egress": [{"to": [{"ipBlock": {"cidr": lab.containers["db0"]["ip"] + "/32"}}],
                          "ports": [{"protocol": "TCP", "port": 5432}]}]}
    apply(lab, egress)
    assert eventually(lambda: not tcp(lab, "web1", "other1", 80))  # same host, not in the CIDR
    assert tcp(lab, "web1", "db0", 5432)
    assert not ping(lab, "web1", "db0")
    assert tcp(lab, "other1", "web1", 80), web1  # web1's ingress is not policed
    delete(lab, "web-out")
    assert eventually(lambda: tcp(lab, "web1", "other1", 80))


def test_5_a_live_change_policy_edited_and_an_endpoint_readded_with_other_labels(lab: Lab) -> None:
    apply(lab, {**DB, "ingress": [{"from": [{"endpointSelector": {"matchLabels":
                                                                  {"app": "other"}}}],
                                   "ports": [{"protocol": "TCP", "port": 5432}]}]})
    assert eventually(lambda: tcp(lab, "other1", "db0", 5432))
    assert eventually(lambda: not tcp(lab, "web1", "db0", 5432))
    apply(lab, DB)
    assert eventually(lambda: tcp(lab, "web1", "db0", 5432)), state(lab)
    assert eventually(lambda: not tcp(lab, "other1", "db0", 5432)), state(lab)
    # other1 comes back as a web: the same container name, labels app=web.
    readd(lab, "other1", "host1", {"app": "web"})
    assert eventually(lambda: tcp(lab, "other1", "db0", 5432))
    # db0 re-added as something no policy selects: open to all.
    readd(lab, "db0", "host0", {"app": "cache"})
    assert eventually(lambda: ping(lab, "web1", "db0") and tcp(lab, "web1", "db0", 22))
    # ... and selected again: the policy applies to the new port at once.
    readd(lab, "db0", "host0", {"app": "db"})
    assert eventually(lambda: tcp(lab, "other1", "db0", 5432))
    assert not tcp(lab, "web1", "db0", 22)
    # ... and other1 back as other: denied again, while web1 still passes.
    readd(lab, "other1", "host1", {"app": "other"})
    assert eventually(lambda: not tcp(lab, "other1", "db0", 5432))
    assert tcp(lab, "web1", "db0", 5432)


def test_6_deleting_the_policy_restores_access(lab: Lab) -> None:
    delete(lab, "db")
    assert eventually(lambda: tcp(lab, "web1", "db0", 22) and ping(lab, "web1", "db0")), state(lab)
    assert tcp(lab, "other1", "db0", 5432)
