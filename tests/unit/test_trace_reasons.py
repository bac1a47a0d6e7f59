"""What overlayctl trace says about a packet comes from the control plane and the container's
routes: pure, no switch."""

from __future__ import annotations

import pytest

from overlay.cli import trace_walk as walk
from overlay.cli.trace import Cluster, Endpoint, Hop, TraceError, build
from overlay.cli.trace_explain import drop_reason, explain
from overlay.gateway.spec import gateway_mac

DEFAULT = (("0.0.0.0/0", "10.0.0.1"),)


def ep(cid: str, network: str, vni: int, ip: str, host: str = "h0",
       routes: tuple[tuple[str, str], ...] = DEFAULT) -> Endpoint:
    last = ip.split(".")[-1]
    return Endpoint(network, cid, "eth0", host, vni, f"0a:58:0a:00:00:{int(last):02x}", (ip,),
                    f"p-{cid}", (f"{ip}/24",), routes)


CLUSTER = Cluster([ep("a", "red", 42, "10.0.0.2"), ep("b", "red", 42, "10.0.0.3", "h1"),
                   ep("z", "blue", 43, "10.1.0.2", "h1", (("0.0.0.0/0", "10.1.0.1"),)),
                   ep("lonely", "red", 42, "10.0.0.9", routes=())],
                  {"h0": "172.31.0.1", "h1": "172.31.0.2"})


def gateway(src: Endpoint, ip: str) -> str | None:
    """The switch's ARP table: it answers for the network's gateway address only."""
    return gateway_mac(src.vni) if ip == "10.0.0.1" else None


def test_forged_source_is_spoofing() -> None:
    req = build(CLUSTER, "a", "b", src_ip="10.0.0.77")
    assert drop_reason(0, req, CLUSTER, arriving=False).startswith("spoofed source: port p-a")


def test_address_nobody_has_is_unknown() -> None:
    req = build(CLUSTER, "a", "10.0.0.99")
    assert req.packet.dst_mac == "0a:58:0a:00:00:63"
    assert drop_reason(20, req, CLUSTER, arriving=False) == \
        "unknown destination: no endpoint of red has 10.0.0.99"


def test_endpoint_of_another_network() -> None:
    req = build(CLUSTER, "a", "z", neighbour=gateway)
    assert drop_reason(20, req, CLUSTER, arriving=False).startswith(
        "other network: 10.1.0.2 is z in blue (VNI 43), the source is in red (VNI 42)")


def test_on_link_destination_gets_the_endpoints_mac() -> None:
    req = build(CLUSTER, "a", "b", proto="udp", dport=53, neighbour=gateway)
    assert req.route is not None and not req.route.routed
    assert (req.packet.dst_mac, req.blocked, req.to_gateway) == ("0a:58:0a:00:00:03", "", False)


def test_off_network_destination_goes_to_the_gateways_mac() -> None:
    """The bug this guards: a made-up MAC for 172.31.0.254, so 'unknown destination'."""
    req = build(CLUSTER, "a", "172.31.0.254", proto="tcp", dport=80, neighbour=gateway)
    assert req.route is not None
    assert (req.route.route, req.route.ip, req.route.routed) == \
        ("default via 10.0.0.1", "10.0.0.1", True)
    assert req.packet.dst_mac == "0e:6f:76:00:00:2a" and req.to_gateway
    assert "dl_dst=0e:6f:76:00:00:2a" in req.packet.flow("in_port=p-a")


def test_other_vni_off_the_subnet_goes_to_the_gateway_and_says_where_it_heads() -> None:
    req = build(CLUSTER, "a", "z", neighbour=gateway)
    assert req.to_gateway
    hop = Hop("h0", "", [], walk.Verdict("gateway", 20, "forward", ports=[7]))
    explain(hop, req, CLUSTER, {7: "ovg42"}, arriving=False)
    assert hop.summary == ("to the gateway of red (port ovg42), towards another network: "
                           "10.1.0.2 is z in blue (VNI 43)")


def test_no_route_in_the_container() -> None:
    req = build(CLUSTER, "lonely", "172.31.0.254", neighbour=gateway)
    assert (req.route, req.blocked, req.packet.dst_mac) == (None, "no-route", "")
    hop = Hop("h0", "", [], walk.Verdict(req.blocked))
    explain(hop, req, CLUSTER, {}, arriving=False)
    assert hop.kind == "no-route"
    assert hop.summary.startswith("not sent: no route in the container: lonely (10.0.0.9/24) "
                                  "has no route to 172.31.0.254 (its routes: none)")


def test_next_hop_nobody_answers() -> None:
    req = build(CLUSTER, "z", "172.31.0.254", neighbour=gateway)  # blue has no gateway here
    assert (req.blocked, req.packet.dst_mac) == ("no-neighbour", "")
    hop = Hop("h1", "", [], walk.Verdict(req.blocked))
    explain(hop, req, CLUSTER, {}, arriving=False)
    assert "next hop 10.1.0.1 (default via 10.1.0.1) does not answer ARP" in hop.summary


def test_tcp_needs_a_port_and_names_must_resolve() -> None:
    with pytest.raises(TraceError, match="--dport"):
        build(CLUSTER, "a", "b", proto="tcp")
    with pytest.raises(TraceError, match="no endpoint 'nope'"):
        build(CLUSTER, "nope", "b")
