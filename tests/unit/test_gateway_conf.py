"""The gateway's netconf side (ipMasq, gateway default, routes, DNS, the IPv6 refusal) and the
names and numbers every host derives from a VNI (overlay/gateway/spec.py)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlay.cni.netconf import parse_netconf
from overlay.cni.result import Attachment, build_result
from overlay.errors import CniError, Code
from overlay.gateway.manager import spec_for
from overlay.gateway.nat import rules
from overlay.gateway.spec import from_external_ids, gateway_mac

BASE = {"cniVersion": "1.0.0", "name": "n", "type": "ovs", "vxlanID": 42,
        "ipam": {"type": "overlay", "subnet": "10.0.0.0/24"}}


def conf(**changes: object) -> bytes:
    return json.dumps({**BASE, **changes}).encode()


def test_gateway_defaults_to_the_first_address_and_masquerade_is_on() -> None:
    nc = parse_netconf(conf())
    assert nc.gateway == (ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Network("10.0.0.0/24"))
    assert nc.ip_masq is True and not nc.ipam.routes_given


def test_named_gateway_and_ip_masq_false() -> None:
    nc = parse_netconf(conf(ipMasq=False, ipam={"subnet": "10.0.0.0/24", "gateway": "10.0.0.254",
                                                "routes": []}))
    assert nc.gateway is not None and str(nc.gateway[0]) == "10.0.0.254"
    assert nc.ip_masq is False and nc.ipam.routes_given and nc.ipam.routes == ()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_ip_masq_must_be_a_boolean(value: object) -> None:
    with pytest.raises(CniError) as err:
        parse_netconf(conf(ipMasq=value))
    assert err.value.code == Code.INVALID_NETCONF and "ipMasq" in err.value.msg


def test_an_ipv6_gateway_is_refused_with_a_reason() -> None:
    ranges = [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64", "gateway": "fd00::1"}]]
    with pytest.raises(CniError) as err:
        parse_netconf(conf(ipam={"ranges": ranges}))
    assert err.value.code == Code.INVALID_NETCONF and "IPv4 only" in err.value.msg


def test_dual_stack_gets_an_ipv4_gateway_only() -> None:
    nc = parse_netconf(conf(ipam={"ranges": [[{"subnet": "fd00::/64"}],
                                             [{"subnet": "10.1.0.0/16"}]]}))
    assert nc.gateway is not None and str(nc.gateway[0]) == "10.1.0.1"
    assert nc.ipam.range_sets[0][0].gateway is None


def test_ipv6_only_network_has_no_gateway() -> None:
    assert parse_netconf(conf(ipam={"subnet": "fd00::/64"})).gateway is None


def test_dns_is_validated_and_returned() -> None:
    dns = {"nameservers": ["10.0.0.53"], "domain": "example.test", "search": ["a.test"],
           "options": ["ndots:2"]}
    nc = parse_netconf(conf(dns=dns))
    assert nc.dns == dns
    result = build_result("1.0.0", Attachment("ovlx", "aa:bb:cc:dd:ee:ff", "eth0",
                                              "0a:58:0a:00:00:02", "/run/netns/x", [], [], 1450),
                          None, nc.dns)
    assert result["dns"] == dns
    for bad in ({"nameservers": "10.0.0.53"}, {"nameservers": ["not-an-ip"]}, {"domain": 5}, []):
        with pytest.raises(CniError) as err:
            parse_netconf(conf(dns=bad))
        assert err.value.code == Code.INVALID_NETCONF


def test_spec_names_and_numbers() -> None:
    spec = spec_for("n", 42, (ipaddress.IPv4Address("10.0.0.1"),
                              ipaddress.IPv4Network("10.0.0.0/24")), True, 1450)
    assert (spec.port, spec.mac, spec.zone, spec.mark) == ("ovg42", "0e:6f:76:00:00:2a", 42,
                                                           42 << 16)
    assert gateway_mac(16_777_215) == "0e:6f:76:ff:ff:ff"
    assert spec_for("n", 65536, (ipaddress.IPv4Address("10.0.0.1"),
                                 ipaddress.IPv4Network("10.0.0.0/24")), True, 1450).zone == 1
    assert from_external_ids(spec.external_ids()) == spec
    assert from_external_ids({"overlay-vni": "42"}) is None
    # Every rule is tagged, and the masquerade exists only with ipMasq.
    assert all(spec.comment in r[2] for r in rules(spec))
    assert any(r[2][-1] == "MASQUERADE" for r in rules(spec))
    nomasq = spec_for("n", 42, (ipaddress.IPv4Address("10.0.0.1"),
                                ipaddress.IPv4Network("10.0.0.0/24")), False, 1450)
    assert not any(r[2][-1] == "MASQUERADE" for r in rules(nomasq))


def test_new_connections_from_a_gateway_port_to_the_host_are_dropped_first() -> None:
    from overlay.gateway.nat import _script

    spec = spec_for("n", 42, (ipaddress.IPv4Address("10.0.0.1"),
                              ipaddress.IPv4Network("10.0.0.0/24")), True, 1450)
    inputs = [r for r in rules(spec) if r[1] == "INPUT"]
    assert inputs == [("filter", "INPUT", [
        "-i", "ovg42", "!", "-p", "icmp", "-m", "conntrack", "!", "--ctstate",
        "ESTABLISHED,RELATED", "-m", "comment", "--comment", "overlay-gw:42", "-j", "DROP"])]
    # Inserted at the top, before whatever ACCEPT a host firewall has for its services.
    assert "-I INPUT 1 -i ovg42" in _script({}, rules(spec))
