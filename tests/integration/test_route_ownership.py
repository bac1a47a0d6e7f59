"""The gateway's kernel side touches only routes and addresses of its own (overlay/gateway/
kernel.py), in a real network namespace: a route the agent did not create is never replaced or
deleted, the agent's routes carry proto 79, and the host's own address is never taken over as
a gateway address. The port is a veth end named like a gateway port (`ovg<vni>`): kernel.py
configures whatever OVS made, and needs only a link that takes ethtool's checksum setting."""

from __future__ import annotations

import ipaddress
import os

import pytest

from overlay.errors import CniError, Code
from overlay.gateway import kernel
from overlay.gateway.spec import GatewaySpec
from overlay.lab.shell import run
from overlay.netlink import underlay
from overlay.netlink.netns import run_in_netns

VNI = 4242
SPEC = GatewaySpec("net-a", VNI, ipaddress.IPv4Interface("10.42.0.1/24"), True, 1450)
OTHER = "uplink0"  # an interface of the host that is not ours


@pytest.fixture
def host(netns: str) -> str:
    name = os.path.basename(netns)
    run(["ip", "link", "add", SPEC.port, "type", "veth", "peer", "name", OTHER], netns=name)
    run(["ip", "link", "set", OTHER, "up"], netns=name)
    run(["ip", "link", "set", SPEC.port, "up"], netns=name)
    run(["ip", "addr", "add", "192.0.2.10/24", "dev", OTHER], netns=name)
    return netns


def routes(netns: str, table: str = "main") -> list[str]:
    out = run(["ip", "route", "show", "table", table], netns=os.path.basename(netns)).stdout
    return [line.strip() for line in out.splitlines()]


def ip(netns: str, *args: str) -> None:
    run(["ip", *args], netns=os.path.basename(netns))


def test_our_routes_carry_proto_79_and_go_with_remove(host: str) -> None:
    assert run_in_netns(host, lambda: kernel.ensure(SPEC)) is None
    assert f"10.42.0.0/24 dev {SPEC.port} proto 79 scope link" in routes(host)
    assert f"10.42.0.0/24 dev {SPEC.port} proto 79 scope link" in routes(host, str(SPEC.table))
    assert run_in_netns(host, lambda: kernel.ensure(SPEC)) is None  # idempotent: ours, replaced
    run_in_netns(host, lambda: kernel.remove(SPEC))
    assert not [r for r in routes(host) if r.startswith("10.42.0.0/24")]
    assert routes(host, str(SPEC.table)) == []


def test_a_route_not_ours_with_the_same_destination_is_never_replaced(host: str) -> None:
    # The operator's (or DHCP's, or a routing daemon's) route to exactly the gateway's subnet.
    ip(host, "route", "add", "10.42.0.0/24", "via", "192.0.2.1", "dev", OTHER, "proto", "static")
    before = routes(host)
    with pytest.raises(CniError) as info:
        run_in_netns(host, lambda: kernel.ensure(SPEC))
    assert info.value.code == Code.INVALID_NETCONF
    assert "route 10.42.0.0/24 via 192.0.2.1 dev uplink0 proto 4 in its main table that the " \
        "overlay agent did not create" in info.value.msg
    assert routes(host) == before  # untouched: not replaced by a route out of the gateway port
    run_in_netns(host, lambda: kernel.remove(SPEC))  # what a rollback does
    assert "10.42.0.0/24 via 192.0.2.1 dev uplink0 proto static" in routes(host)


def test_remove_deletes_only_our_route_not_a_foreign_one_beside_it(host: str) -> None:
    run_in_netns(host, lambda: kernel.ensure(SPEC))
    # Same destination, another metric: both live in the main table at once.
    ip(host, "route", "add", "10.42.0.0/24", "via", "192.0.2.1", "dev", OTHER, "metric", "100")
    run_in_netns(host, lambda: kernel.remove(SPEC))
    assert [r for r in routes(host) if r.startswith("10.42.0.0/24")] == [
        "10.42.0.0/24 via 192.0.2.1 dev uplink0 metric 100"]


def test_the_hosts_own_address_is_never_made_a_gateway_address(host: str) -> None:
    own = GatewaySpec("net-b", VNI, ipaddress.IPv4Interface("192.0.2.10/24"), True, 1450)
    with pytest.raises(CniError) as info:
        run_in_netns(host, lambda: kernel.ensure(own))
    assert info.value.code == Code.INVALID_NETCONF
    assert "gateway address 192.0.2.10 of network net-b is an address of interface uplink0" \
        in info.value.msg
    addrs = run(["ip", "-o", "addr", "show", "dev", own.port],
                netns=os.path.basename(host)).stdout
    assert "192.0.2.10" not in addrs
    run_in_netns(host, lambda: kernel.remove(own))
    assert "192.0.2.0/24 dev uplink0 proto kernel scope link src 192.0.2.10" in routes(host)


def test_another_gateway_port_may_hold_the_same_address(host: str) -> None:
    # Two networks with one subnet (apart by VNI) have one gateway address on two ports.
    ip(host, "link", "add", "ovg4343", "type", "veth", "peer", "name", "p4343")
    ip(host, "addr", "add", "10.42.0.1/24", "dev", "ovg4343", "noprefixroute")
    assert run_in_netns(host, lambda: kernel.ensure(SPEC)) is None
    addrs = run(["ip", "-o", "addr", "show", "dev", SPEC.port], netns=os.path.basename(host))
    assert "10.42.0.1/24" in addrs.stdout


def test_moving_the_underlay_address_carries_the_hosts_routes_as_they_were(netns: str) -> None:
    """netdev mode: the underlay address moves from the NIC to br-phy (overlay/netlink/
    underlay.py), and the host's routes via the NIC come along with their own protocol and
    metric: they stay the operator's, never marked as ours."""
    name = os.path.basename(netns)
    for link, peer in (("nic9", "wire9"), ("brphy9", "tap9")):
        ip(netns, "link", "add", link, "type", "veth", "peer", "name", peer)
        ip(netns, "link", "set", peer, "up")
    ip(netns, "addr", "add", "192.0.2.10/24", "dev", "nic9")
    ip(netns, "link", "set", "nic9", "up")
    ip(netns, "route", "add", "default", "via", "192.0.2.1", "dev", "nic9", "proto", "static",
       "metric", "50")
    ip(netns, "route", "add", "198.51.100.0/24", "via", "192.0.2.1", "dev", "nic9")
    address = ipaddress.IPv4Interface("192.0.2.10/24")
    run_in_netns(netns, lambda: underlay.move_address(address, "nic9", "brphy9"))
    assert routes(netns) == [
        "default via 192.0.2.1 dev brphy9 proto static metric 50",
        "192.0.2.0/24 dev brphy9 proto kernel scope link src 192.0.2.10",
        "198.51.100.0/24 via 192.0.2.1 dev brphy9"]
    run_in_netns(netns, lambda: underlay.move_address(address, "nic9", "brphy9"))  # idempotent
    assert len(routes(netns)) == 3, run(["ip", "route"], netns=name).stdout
