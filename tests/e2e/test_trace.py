"""overlayctl trace on the lab: one test per verdict, traced by the real switch of each host
(`python -m overlay.lab trace` runs overlayctl in the underlay namespace, hop after hop)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab.topology import Lab
from overlay.lab.trace import lab_trace, render


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    ctr.define_network(lab, "blue", 43, "10.1.0.0/24")
    for name, host, network in (("a", "host0", "my-net"), ("b", "host1", "my-net"),
                                ("c", "host0", "my-net"), ("z", "host1", "blue")):
        assert ctr.add_container(lab, name, host, network).returncode == 0
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


def test_other_network_dropped(lab: Lab) -> None:
    t = lab_trace(lab, "a", "z", [])
    v = t["hops"][0]["verdict"]
    assert (v["kind"], v["table_name"]) == ("dropped", "forward")
    assert v["reason"].startswith(f"other network: 10.1.0.2 is {cid(lab, 'z')} in blue (VNI 43)")


def test_lab_cli_trace_and_metrics(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    from overlay.lab.__main__ import main

    assert main(["--workdir", lab.workdir, "trace", "a", "b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [h["host"] for h in result["hops"]] == ["host0", "host1"]
    assert result["verdict"].startswith("delivered to port")
    assert main(["--workdir", lab.workdir, "trace", "a", "b", "--proto", "arp"]) == 0
    assert "verdict: answered by ARP in OVS: 10.0.0.3" in capsys.readouterr().out
    assert main(["--workdir", lab.workdir, "metrics", "host0"]) == 0
    assert 'overlay_endpoints{location="local"} 2.0' in capsys.readouterr().out
