import ipaddress
import json

import pytest

from overlay.cni.netconf import parse_env, parse_netconf
from overlay.errors import CniError, Code

BASE = {"cniVersion": "1.0.0", "name": "my-net", "type": "ovs", "bridge": "br-int",
        "vxlanID": 42, "ipam": {"type": "overlay", "subnet": "10.0.0.0/24"}}


def conf(**changes: object) -> bytes:
    body = {**BASE, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def error_of(data: bytes) -> CniError:
    with pytest.raises(CniError) as info:
        parse_netconf(data)
    return info.value


def test_valid_netconf_is_parsed_with_defaults() -> None:
    nc = parse_netconf(conf(bridge=None))
    assert (nc.name, nc.vni, nc.bridge, nc.mtu) == ("my-net", 42, "br-int", None)
    assert nc.agent_socket == "/run/overlay/agent.sock"
    assert nc.subnet == ipaddress.ip_network("10.0.0.0/24")
    rng = nc.ipam.ranges[0]  # type: ignore[union-attr]
    # The gateway defaults to the first address, as host-local does (docs/cni-reference.md).
    assert (str(rng.start), str(rng.end), str(rng.gateway)) == ("10.0.0.1", "10.0.0.254", "10.0.0.1")
    assert nc.ip_masq and nc.dns == {}


def test_malformed_json_is_a_decoding_failure() -> None:
    err = error_of(b'{"cniVersion": "1.0.0", "name": ')
    assert err.code == Code.DECODING_FAILURE and "not valid JSON" in err.msg


@pytest.mark.parametrize("vni", [0, 16_777_216, -1, "42", True, None, 4.2])
def test_vxlan_id_must_be_an_integer_in_range(vni: object) -> None:
    err = error_of(conf(vxlanID=vni))
    assert err.code == Code.INVALID_NETCONF
    assert "vxlanID must be an integer from 1 to 16777215" in err.msg


@pytest.mark.parametrize("vni", [1, 16_777_215])
def test_vxlan_id_bounds_are_accepted(vni: int) -> None:
    assert parse_netconf(conf(vxlanID=vni)).vni == vni


def test_unsupported_version_is_code_1() -> None:
    err = error_of(conf(cniVersion="9.9.9"))
    assert err.code == Code.INCOMPATIBLE_CNI_VERSION and "9.9.9" in err.msg


@pytest.mark.parametrize("changes, words", [
    ({"type": "bridge"}, "type must be \"ovs\""),
    ({"name": "bad/name"}, "name must match"),
    ({"bridge": "a/b"}, "bridge must be an interface name"),
    ({"mtu": 10}, "mtu must be an integer from 68"),
    ({"agentSocket": "relative.sock"}, "agentSocket must be an absolute path"),
    ({"ipam": None}, "ipam is required"),
    ({"ipam": {"type": "overlay"}}, "needs a 'subnet'"),
    ({"ipam": {"subnet": "10.0.0.0/33"}}, "is not a CIDR"),
    ({"ipam": {"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}}, "outside subnet"),
    ({"ipam": {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}},
     "after rangeEnd"),
])
def test_invalid_fields_name_the_field(changes: dict[str, object], words: str) -> None:
    err = error_of(conf(**changes))
    assert err.code == Code.INVALID_NETCONF
    assert words in err.msg


def test_other_ipam_types_are_delegated_untouched() -> None:
    nc = parse_netconf(conf(ipam={"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}))
    assert nc.ipam.delegated and nc.ipam.type == "host-local" and nc.ipam.range_sets == ()
    assert nc.source == conf(ipam={"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]})
    assert error_of(conf(ipam={"type": "../bin/sh"})).code == Code.INVALID_NETCONF


def test_dual_stack_range_sets() -> None:
    nc = parse_netconf(conf(ipam={"ranges": [[{"subnet": "10.0.0.0/24"}],
                                             [{"subnet": "fd00::/64"}]]}))
    assert [rset[0].subnet.version for rset in nc.ipam.range_sets] == [4, 6]
    err = error_of(conf(cniVersion="0.2.0", ipam={"ranges": [[{"subnet": "10.0.0.0/24"}],
                                                             [{"subnet": "10.1.0.0/24"}]]}))
    assert "one address per family" in err.msg
    assert "mixes IPv4 and IPv6" in error_of(conf(ipam={"ranges": [[
        {"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]})).msg


@pytest.mark.parametrize("changes, words", [
    ({"name": "net\n"}, "name must match"),
    ({"ipam": {"subnet": "10.0.0.0/24", "routes": 5}}, "ipam.routes must be a list"),
    ({"ipam": {"ranges": [[]]}}, "empty range set"),
    ({"ipam": {"subnet": "10.0.0.0/24", "exclude": "10.0.0.5"}}, "ipam.exclude must be a list"),
])
def test_review_findings_are_refused_as_invalid(changes: dict[str, object], words: str) -> None:
    err = error_of(conf(**changes))
    assert err.code == Code.INVALID_NETCONF and words in err.msg


def test_ranges_and_routes() -> None:
    nc = parse_netconf(conf(ipam={"type": "overlay", "ranges": [[
        {"subnet": "10.1.0.0/16", "rangeStart": "10.1.5.10", "rangeEnd": "10.1.5.20",
         "gateway": "10.1.0.1"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}))
    assert nc.ipam is not None
    rng = nc.ipam.ranges[0]
    assert (str(rng.start), str(rng.end), str(rng.gateway)) == ("10.1.5.10", "10.1.5.20",
                                                                "10.1.0.1")
    assert [(str(r.dst), str(r.gw)) for r in nc.ipam.routes] == [("0.0.0.0/0", "10.1.0.1")]


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/proc/self/ns/net",
       "CNI_IFNAME": "eth0"}


def test_env_is_parsed() -> None:
    env = parse_env(ENV)
    assert (env.command, env.container_id, env.ifname) == ("ADD", "abc123", "eth0")


@pytest.mark.parametrize("changes, words", [
    ({"CNI_COMMAND": "FROB"}, "CNI_COMMAND must be one of"),
    ({"CNI_CONTAINERID": "../x"}, "CNI_CONTAINERID must match"),
    ({"CNI_IFNAME": "a-very-long-interface-name"}, "CNI_IFNAME must be"),
    ({"CNI_IFNAME": "et/h0"}, "CNI_IFNAME must be"),
    ({"CNI_IFNAME": "eth%d"}, "CNI_IFNAME must be"),
    ({"CNI_IFNAME": "é" * 8}, "CNI_IFNAME must be"),  # 8 characters, 16 bytes
    ({"CNI_CONTAINERID": "abc\n"}, "CNI_CONTAINERID must match"),
    ({"CNI_NETNS": ""}, "CNI_NETNS is required"),
    ({"CNI_NETNS": "/var/run/netns/does-not-exist-here"}, "does not exist"),
])
def test_bad_env_is_code_4(changes: dict[str, str], words: str) -> None:
    with pytest.raises(CniError) as info:
        parse_env({**ENV, **changes})
    assert info.value.code == Code.INVALID_ENV and words in info.value.msg


def test_del_does_not_need_an_existing_netns() -> None:
    env = parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": "/var/run/netns/gone"})
    assert env.command == "DEL"


# --- found by tests/integration/test_fuzz.py --------------------------------------------------


def test_json_nested_too_deeply_is_a_decoding_failure() -> None:
    err = error_of(b"[" * 100_000)
    assert err.code == Code.DECODING_FAILURE and "nested too deeply" in err.details


@pytest.mark.parametrize("ipam, words", [
    ({"subnet": 167772160}, "is not a CIDR"),  # ipaddress would read 10.0.0.0/32
    ({"subnet": "10.0.0.0/24", "gateway": 167772161}, "gateway 167772161 is not an IP address"),
    ({"subnet": "10.0.0.0/24", "rangeStart": 167772170}, "rangeStart"),
    ({"subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": 5}]}, "route gw 5"),
    ({"subnet": "10.0.0.0/24", "routes": [{"dst": 0}]}, "route dst 0"),
    ({"subnet": "10.0.0.0/24", "exclude": [5]}, "exclude entry 5"),
    ({"subnet": "fd00::%eth0/64"}, "is not a CIDR"),  # IPv6 zones have no place here
    ({"subnet": "fe80::/64", "gateway": "fe80::1%eth0"}, "is not an IP address"),
    ({"subnet": "fd00::/128"}, "too small (at least a /127)"),
    ({"type": "ovs", "subnet": "10.0.0.0/24"}, "names this plugin itself"),  # self-delegation hang
])
def test_ipam_values_that_are_not_address_strings_are_refused(ipam: dict[str, object],
                                                              words: str) -> None:
    err = error_of(conf(ipam=ipam))
    assert err.code == Code.INVALID_NETCONF and words in err.msg, err


def test_smallest_ipv6_subnet_is_accepted() -> None:
    rng = parse_netconf(conf(ipam={"subnet": "fd00::/127"})).ipam.ranges[0]
    assert (str(rng.start), str(rng.end)) == ("fd00::1", "fd00::1")


@pytest.mark.parametrize("prev, words", [
    ({"interfaces": 5}, "prevResult.interfaces must be a list of objects"),
    ({"ips": "10.0.0.5/24"}, "prevResult.ips must be a list of objects"),
    ({"ips": [1]}, "prevResult.ips must be a list of objects"),
    ({"routes": {"dst": "0.0.0.0/0"}}, "prevResult.routes must be a list of objects"),
    ({"dns": ["10.0.0.53"]}, "prevResult.dns must be an object"),
    ([], "prevResult must be a CNI result object"),
])
def test_prev_result_of_the_wrong_shape_is_a_decoding_failure(prev: object, words: str) -> None:
    err = error_of(conf(prevResult=prev))
    assert err.code == Code.DECODING_FAILURE and words in err.msg, err


def test_prev_result_with_nulls_and_the_usual_shape_is_accepted() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.1.0.5/24", "interface": 0}], "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.53"]}}
    assert parse_netconf(conf(prevResult=prev)).prev_result == prev
    nulls = {"cniVersion": "1.0.0", "interfaces": None, "ips": None, "routes": None, "dns": None}
    assert parse_netconf(conf(prevResult=nulls)).prev_result == nulls


@pytest.mark.parametrize("ifname", ["e\x01th", "a\x7fb", "a\x9bb", "\x1b[31m", "à", "a\u00a0b",
                                    "\ud800"])
def test_ifnames_with_control_characters_or_a_kernel_space_byte_are_code_4(ifname: str) -> None:
    # 'à' is c3 a0 in UTF-8, and the kernel's isspace() takes 0xa0: it refused it (103) before.
    with pytest.raises(CniError) as info:
        parse_env({**ENV, "CNI_IFNAME": ifname})
    assert info.value.code == Code.INVALID_ENV and "CNI_IFNAME must be" in info.value.msg


@pytest.mark.parametrize("ifname", ["é" * 7, "名前", "eth0.100", "x-y_z", "e" * 15])
def test_unicode_ifnames_the_kernel_keeps_are_accepted(ifname: str) -> None:
    assert parse_env({**ENV, "CNI_IFNAME": ifname}).ifname == ifname


def test_bridge_with_a_lone_surrogate_is_invalid_not_a_crash() -> None:
    err = error_of(b'{"cniVersion": "1.0.0", "name": "n", "type": "ovs", "vxlanID": 1, '
                   b'"bridge": "\\ud800", "ipam": {"subnet": "10.0.0.0/24"}}')
    assert err.code == Code.INVALID_NETCONF and "bridge must be an interface name" in err.msg


@pytest.mark.parametrize("route", [{"dst": "0.0.0.0/0", "gw": "fd00::1"},
                                   {"dst": "fd20::/48", "gw": "10.0.0.1"}])
def test_route_mixing_families_is_invalid(route: dict[str, str]) -> None:
    # ADD installed 0.0.0.0/0 via fd00::1 (RFC 5549), then CHECK reported it missing (106).
    err = error_of(conf(ipam={"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]],
                              "routes": [route]}))
    assert err.code == Code.INVALID_NETCONF and "mixes IPv4 and IPv6" in err.msg


@pytest.mark.parametrize("ranges", [
    [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}], [{"subnet": "10.0.0.0/24"}]],
    [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.50"},
      {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50"}]],
    [[{"subnet": "10.0.0.0/16"}], [{"subnet": "fd00::/64"}], [{"subnet": "10.0.7.0/24"}]],
])
def test_overlapping_ranges_are_invalid(ranges: list[object]) -> None:
    # The first: the second set handed out 10.0.0.1, the first set's gateway, after the first
    # set gave the same container 10.0.0.2. host-local refuses overlapping ranges too.
    err = error_of(conf(ipam={"ranges": ranges}))
    assert err.code == Code.INVALID_NETCONF and "overlaps with" in err.msg, err


def test_ranges_side_by_side_in_one_subnet_are_fine() -> None:
    nc = parse_netconf(conf(ipam={"ranges": [
        [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.12"},
         {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.13", "rangeEnd": "10.0.0.60"}],
        [{"subnet": "fd00::/64"}], [{"subnet": "10.1.0.0/24"}]]}))
    assert len(nc.ipam.ranges) == 4


def test_dhcp_servers_are_named_by_address() -> None:
    assert parse_netconf(conf()).dhcp_servers == ()
    nc = parse_netconf(conf(dhcpServers=["10.0.0.2", "fd00::2"]))
    assert nc.dhcp_servers == (ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("fd00::2"))


@pytest.mark.parametrize("value", ["10.0.0.2", ["10.0.0.2/24"], ["c0/eth0"], [5], [None],
                                   ["fe80::1%eth0"], ["10.0.0.2"] * 17, {"a": 1}])
def test_bad_dhcp_servers_are_code_7_and_say_what_to_write(value: object) -> None:
    err = error_of(conf(dhcpServers=value))
    assert err.code == Code.INVALID_NETCONF and "dhcpServers" in err.msg, err.msg


def test_the_network_record_names_every_subnet_first_first() -> None:
    conf = parse_netconf(json.dumps({
        "cniVersion": "1.0.0", "name": "dual", "type": "ovs", "vxlanID": 6,
        "ipam": {"type": "overlay", "ranges": [[{"subnet": "10.6.0.0/24"}],
                                               [{"subnet": "fd00:6::/64"}]]}}).encode())
    assert conf.subnets_text == "10.6.0.0/24,fd00:6::/64"
    assert str(conf.subnet) == "10.6.0.0/24"
