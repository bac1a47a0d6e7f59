"""The check that refuses a network whose subnet would break its host (overlay/cni/subnets.py):
pure functions over a host's addresses, routes, the cluster's VTEPs and etcd's endpoints."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlay.cni.netconf import parse_netconf
from overlay.cni.subnets import SubnetGuard, ours_route, overlaps
from overlay.errors import CniError, Code
from overlay.netlink.hostnets import HostAddress, HostNetworks, HostRoute
from overlay.netlink.rtnl import RTPROT_OVERLAY

KERNEL, BOOT, STATIC = 2, 3, 4
ip = ipaddress.ip_address
net = ipaddress.ip_network
iface = ipaddress.ip_interface

# host0 of the lab in netdev mode: the underlay address on br-phy, its connected route, a
# default route via the underlay's router, an operator's static route, and our own pieces.
HOST = HostNetworks(
    addresses=(HostAddress("lo", iface("127.0.0.1/8")),
               HostAddress("br-phy", iface("172.31.0.1/24")),
               HostAddress("br-phy", iface("fe80::1/64")),
               HostAddress("ovg42", iface("10.0.0.1/24"))),  # network 42's gateway: ours
    routes=(HostRoute(net("0.0.0.0/0"), (ip("172.31.0.254"),), "br-phy", BOOT),
            HostRoute(net("172.31.0.0/24"), (), "br-phy", KERNEL),
            HostRoute(net("10.9.0.0/16"), (ip("172.31.0.254"),), "br-phy", STATIC),
            HostRoute(net("fe80::/64"), (), "br-phy", KERNEL),
            HostRoute(net("10.0.0.0/24"), (), "ovg42", RTPROT_OVERLAY),
            HostRoute(net("10.0.1.0/24"), (), "ovg43", STATIC)))  # an older agent's: ours
VTEPS = {"host0": "172.31.0.1", "host1": "172.31.0.2", "far": "192.168.77.5"}
ETCD = ("http://172.31.0.254:2379", "https://etcd.example:2379")


def found(subnet: str, host: HostNetworks = HOST, vteps: dict[str, str] | None = None,
          etcd: tuple[str, ...] = ETCD) -> list[str]:
    return overlaps(net(subnet), host, VTEPS if vteps is None else vteps, etcd)


def test_the_underlay_subnet_overlaps_its_network_vteps_etcd_and_route() -> None:
    assert found("172.31.0.0/24") == [
        "the underlay network 172.31.0.0/24 of interface br-phy (address 172.31.0.1)",
        "the VTEP 172.31.0.1 of host host0",
        "the VTEP 172.31.0.2 of host host1",
        "the etcd endpoint http://172.31.0.254:2379",
        "the next hop of the host route default via 172.31.0.254 dev br-phy proto 3",
        "the host route 172.31.0.0/24 dev br-phy proto 2",
        "the next hop of the host route 10.9.0.0/16 via 172.31.0.254 dev br-phy proto 4"]


@pytest.mark.parametrize("subnet", ["172.31.0.0/16", "172.31.0.128/25", "172.0.0.0/8"])
def test_covering_or_covered_by_the_underlay_both_conflict(subnet: str) -> None:
    assert "the underlay network 172.31.0.0/24 of interface br-phy (address 172.31.0.1)" in \
        found(subnet)


def test_a_vtep_outside_every_host_network_conflicts_alone() -> None:
    assert found("192.168.77.0/24") == ["the VTEP 192.168.77.5 of host far"]
    assert found("192.168.77.0/30") == []  # .5 is outside it


def test_a_host_route_not_ours_conflicts_whichever_covers_the_other() -> None:
    route = "the host route 10.9.0.0/16 via 172.31.0.254 dev br-phy proto 4"
    assert found("10.9.3.0/24") == [route]
    assert found("10.0.0.0/8") == [route]  # ours (ovg42, ovg43) do not count


def test_the_default_route_is_no_conflict_but_its_next_hop_is() -> None:
    assert found("10.200.0.0/16") == []
    host = HostNetworks(routes=(HostRoute(net("0.0.0.0/0"), (ip("10.200.0.1"),), "eth1",
                                          BOOT),))
    assert found("10.200.0.0/16", host, {}, ()) == [
        "the next hop of the host route default via 10.200.0.1 dev eth1 proto 3"]


def test_our_gateway_ports_and_routes_are_not_conflicts() -> None:
    # Networks may share a subnet (they are apart by VNI): another network's gateway on this
    # host is no reason to refuse.
    assert found("10.0.0.0/24") == []
    assert ours_route(HostRoute(net("10.5.0.0/24"), (), "br-phy", RTPROT_OVERLAY))
    assert not ours_route(HostRoute(net("10.5.0.0/24"), (), "br-phy", STATIC))


def test_loopback_and_ipv6_underlay_count() -> None:
    assert found("127.0.0.0/24") == ["the underlay network 127.0.0.0/8 of interface lo "
                                     "(address 127.0.0.1)"]
    assert found("fe80::/64")[0] == "the underlay network fe80::/64 of interface br-phy " \
        "(address fe80::1)"
    assert found("fd00:1::/64") == []


def test_etcd_names_are_not_resolved_and_other_versions_never_meet() -> None:
    assert found("10.77.0.0/24", etcd=("http://10.77.0.9:2379", "http://etcd:2379")) == [
        "the etcd endpoint http://10.77.0.9:2379"]
    assert found("::/0", HostNetworks(addresses=(HostAddress("eth0", iface("10.0.0.2/8")),)),
                 {"h": "10.0.0.2"}, ()) == []


def guard(host: HostNetworks = HOST) -> SubnetGuard:
    return SubnetGuard(read_host=lambda: host, vteps=lambda: VTEPS, etcd_endpoints=ETCD)


def netconf(ipam: dict[str, object]) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "bad-net", "type": "ovs",
                       "vxlanID": 77, "ipam": ipam}).encode()


def test_guard_refuses_with_code_7_naming_each_overlap() -> None:
    with pytest.raises(CniError) as info:
        guard().check(parse_netconf(netconf({"type": "overlay", "subnet": "172.31.0.0/24"})))
    err = info.value
    assert err.code == Code.INVALID_NETCONF
    assert err.msg.startswith("network bad-net: subnet 172.31.0.0/24 overlaps the underlay "
                              "network 172.31.0.0/24 of interface br-phy (address 172.31.0.1); ")
    assert "subnet 172.31.0.0/24 overlaps the VTEP 172.31.0.2 of host host1" in err.msg
    assert err.msg.endswith("; choose a subnet that overlaps none of these")


def test_guard_checks_every_range_set_and_passes_clean_ones() -> None:
    guard().check(parse_netconf(netconf({"type": "overlay", "subnet": "10.1.0.0/24"})))
    with pytest.raises(CniError) as info:
        guard().check(parse_netconf(netconf({"type": "overlay", "ranges": [
            [{"subnet": "10.1.0.0/24"}], [{"subnet": "192.168.77.0/24"}]]})))
    assert "subnet 192.168.77.0/24 overlaps the VTEP 192.168.77.5 of host far" in info.value.msg
    assert "10.1.0.0/24 overlaps" not in info.value.msg


def test_guard_leaves_delegated_ipam_alone() -> None:
    def unreadable() -> HostNetworks:
        raise AssertionError("a delegated IPAM names no subnet: nothing to read")
    SubnetGuard(read_host=unreadable, vteps=dict, etcd_endpoints=()).check(parse_netconf(
        netconf({"type": "host-local", "subnet": "172.31.0.0/24"})))


def test_vteps_that_are_not_addresses_are_ignored() -> None:
    vteps = {"odd": "not-an-address", "empty": "", "v6": "fd00::1", "ok": "10.3.0.9"}
    assert found("10.3.0.0/24", HostNetworks(), vteps, ()) == ["the VTEP 10.3.0.9 of host ok"]
    assert found("fd00::/64", HostNetworks(), vteps, ()) == ["the VTEP fd00::1 of host v6"]
