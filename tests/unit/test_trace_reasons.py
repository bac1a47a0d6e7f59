"""What overlayctl trace says about a drop comes from the control plane: pure, no switch."""

from __future__ import annotations

import pytest

from overlay.cli.trace import Cluster, Endpoint, TraceError, build, drop_reason


def ep(cid: str, network: str, vni: int, ip: str, host: str = "h0") -> Endpoint:
    last = ip.split(".")[-1]
    return Endpoint(network, cid, "eth0", host, vni, f"0a:58:0a:00:00:{int(last):02x}", (ip,),
                    f"p-{cid}")


CLUSTER = Cluster([ep("a", "red", 42, "10.0.0.1"), ep("b", "red", 42, "10.0.0.2", "h1"),
                   ep("z", "blue", 43, "10.1.0.1", "h1")], {"h0": "172.31.0.1", "h1": "172.31.0.2"})


def test_forged_source_is_spoofing() -> None:
    req = build(CLUSTER, "a", "b", src_ip="10.0.0.77")
    assert drop_reason(0, req, CLUSTER, arriving=False).startswith("spoofed source: port p-a")


def test_address_nobody_has_is_unknown() -> None:
    req = build(CLUSTER, "a", "10.0.0.99")
    assert req.packet.dst_mac == "0a:58:0a:00:00:63"
    assert drop_reason(20, req, CLUSTER, arriving=False) == \
        "unknown destination: no endpoint of red has 10.0.0.99"


def test_endpoint_of_another_network() -> None:
    req = build(CLUSTER, "a", "z")
    assert drop_reason(20, req, CLUSTER, arriving=False).startswith(
        "other network: 10.1.0.1 is z in blue (VNI 43), the source is in red (VNI 42)")


def test_tcp_needs_a_port_and_names_must_resolve() -> None:
    with pytest.raises(TraceError, match="--dport"):
        build(CLUSTER, "a", "b", proto="tcp")
    with pytest.raises(TraceError, match="no endpoint 'nope'"):
        build(CLUSTER, "nope", "b")
