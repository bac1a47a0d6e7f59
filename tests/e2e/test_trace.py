"""overlayctl trace on the lab: one test per verdict, traced by the real switch of each host
and, for a packet given to the gateway, the host's real routes and iptables rules
(`python -m overlay.lab trace` runs overlayctl in each host's namespace, hop after hop)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab.topology import Lab
from overlay.lab.trace import lab_trace, render

SERVER_IP = "172.31.0.254"  # the lab's underlay namespace: the "outside world"
GATEWAY_MAC = "0e:6f:76:00:00:2a"  # VNI 42


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    ctr.define_network(lab, "blue", 43, "10.1.0.0/24")
    ctr.define_network(lab, "plain", 44, "10.2.0.0/24")
    for name, host, network in (("a", "host0", "my-net"), ("b", "host1", "my-net"),
                                ("c", "host0", "my-net"), ("z", "host1", "blue"),
                                ("y", "host0", "blue")):
        assert ctr.add_container(lab, name, host, network).returncode == 0
    plain = ctr.plugin_netconf(ctr.read_conflist(lab.host("host0"), "plain"))
    assert ctr.add_container(lab, "p", "host0", netconf={**plain, "ipMasq": False}).returncode == 0
    ctr.wait_converged(lab)
    return lab


def cid(lab: Lab, name: str) -> str:
    return lab.containers[name]["container_id"]


def port_of(lab: Lab, name: str, trace: dict[str, Any]) -> str:
    dst = trace["destination"]
    assert dst["container_id"] == cid(lab, name)
    return str(dst["port"])


def test_delivered_to_a_port_on_the_same_host(lab: Lab) -> None:
    t = lab_trace(lab, "a", "c", [])
    assert len(t["hops"]) == 1
    assert t["verdict"] == f"delivered to port {port_of(lab, 'c', t)} (container {cid(lab, 'c')})"
    assert [s["table_name"] for s in t["hops"][0]["steps"]] == ["classify", "forward"]


def test_tunneled_then_delivered_on_the_destination_host(lab: Lab) -> None:
    t = lab_trace(lab, "a", "b", ["--proto", "tcp", "--dport", "80"])
    first, second = t["hops"]
    assert first["flow"].startswith("tcp,in_port=") and "tp_dst=80" in first["flow"]
    assert first["host"] == "host0"
    assert first["summary"] == "tunneled to VTEP 172.31.0.2 with VNI 42 (continue on host host1)"
    assert first["verdict"]["vtep"] == "172.31.0.2" and first["verdict"]["vni"] == 42
    assert second["host"] == "host1" and "tun_id=42" in second["flow"]
    assert [s["table_name"] for s in second["steps"]] == ["classify", "deliver"]
    assert t["verdict"] == f"delivered to port {port_of(lab, 'b', t)} (container {cid(lab, 'b')})"
    assert "on host1:" in render(t)


def test_arp_answered_inside_ovs(lab: Lab) -> None:
    t = lab_trace(lab, "a", "b", ["--proto", "arp"])
    b_mac = t["destination"]["mac"]
    assert t["verdict"] == f"answered by ARP in OVS: 10.0.0.3 is at {b_mac} ({cid(lab, 'b')} on host1)"
    assert t["hops"][0]["verdict"]["kind"] == "arp-reply"


def test_spoofed_source_dropped_at_classify(lab: Lab) -> None:
    t = lab_trace(lab, "a", "b", ["--src-ip", "10.0.0.77"])
    v = t["hops"][0]["verdict"]
    assert (v["kind"], v["table"], v["table_name"]) == ("dropped", 0, "classify")
    assert v["reason"].startswith("spoofed source:") and "10.0.0.77" in v["reason"]


def test_unknown_destination_dropped(lab: Lab) -> None:
    t = lab_trace(lab, "a", "10.0.0.99", [])
    v = t["hops"][0]["verdict"]
    assert (v["kind"], v["table_name"]) == ("dropped", "forward")
    assert v["reason"] == "unknown destination: no endpoint of my-net has 10.0.0.99"
    arp = lab_trace(lab, "a", "10.0.0.99", ["--proto", "arp"])["hops"][0]["verdict"]
    assert (arp["kind"], arp["table_name"]) == ("dropped", "arp")


def test_other_network_refused_at_the_gateway(lab: Lab) -> None:
    """Off a's subnet, so to the gateway; the host routes it to blue's gateway port, and the
    network separation rule drops it."""
    t = lab_trace(lab, "a", "z", [])
    assert t["packet"]["dst_mac"] == GATEWAY_MAC and len(t["hops"]) == 1
    z_ip = t["destination"]["ips"][0]
    assert t["kind"] == "refused" and t["hops"][0]["verdict"]["kind"] == "gateway"
    assert t["verdict"].startswith(f"to the gateway of my-net (port ovg42), towards another "
                                   f"network: {z_ip} is {cid(lab, 'z')} in blue (VNI 43); "
                                   "refused by the network separation ")
    # The FORWARD rule (-o ovg+ DROP), or the blackhole route of the routing-based separation
    # (overlay/gateway/isolation.py), whichever the host has.
    assert "-o ovg+" in t["leaves"]["rule"] or t["leaves"]["rule"].startswith("blackhole")


def test_to_the_gateway_and_masqueraded_to_the_host_address(lab: Lab) -> None:
    """The issue's own example: not 'unknown destination' but out, masqueraded."""
    t = lab_trace(lab, "a", SERVER_IP, ["--proto", "tcp", "--dport", "80"])
    assert t["route"] == {"route": "default via 10.0.0.1", "next_hop": "10.0.0.1",
                          "routed": True}
    assert t["packet"]["dst_mac"] == GATEWAY_MAC
    hop = t["hops"][0]
    assert [s["table_name"] for s in hop["steps"]] == ["classify", "forward"]
    assert (hop["verdict"]["kind"], t["kind"]) == ("gateway", "egress")
    host0 = lab.host("host0")
    assert (t["leaves"]["how"], t["leaves"]["address"]) == ("masqueraded", host0.vtep)
    assert "overlay-gw:42" in t["leaves"]["rule"] and "MASQUERADE" in t["leaves"]["rule"]
    assert t["verdict"] == (f"to the gateway of my-net (port ovg42); masqueraded to "
                            f"{host0.vtep} (the host's source address for {SERVER_IP}), "
                            f"leaves by {t['leaves']['dev']}")


def test_ip_masq_off_leaves_with_the_container_address(lab: Lab) -> None:
    t = lab_trace(lab, "p", SERVER_IP, ["--proto", "udp", "--dport", "53"])
    assert t["kind"] == "egress"
    assert (t["leaves"]["how"], t["leaves"]["address"]) == ("not-masqueraded",
                                                            lab.containers["p"]["ip"])


def test_no_egress_route_on_the_host(lab: Lab) -> None:
    t = lab_trace(lab, "a", "192.0.2.1", [])  # TEST-NET-1: the lab hosts have no default route
    assert t["kind"] == "refused"
    assert t["leaves"]["why"].startswith("refused: no egress route on the host to 192.0.2.1")


def test_lab_cli_trace_and_metrics(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    from overlay.lab.__main__ import main

    assert main(["--workdir", lab.workdir, "trace", "a", "b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [h["host"] for h in result["hops"]] == ["host0", "host1"]
    assert result["verdict"].startswith("delivered to port")
    assert main(["--workdir", lab.workdir, "trace", "a", "b", "--proto", "arp"]) == 0
    assert "verdict: answered by ARP in OVS: 10.0.0.3" in capsys.readouterr().out
    assert main(["--workdir", lab.workdir, "trace", "a", SERVER_IP, "--proto", "tcp",
                 "--dport", "80"]) == 0
    out = capsys.readouterr().out
    assert "route in the container: default via 10.0.0.1" in out
    assert f"masqueraded to {lab.host('host0').vtep}" in out
    assert main(["--workdir", lab.workdir, "metrics", "host0"]) == 0
    assert 'overlay_endpoints{location="local"} 4.0' in capsys.readouterr().out
