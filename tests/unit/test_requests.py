import ipaddress
import json

import pytest

from overlay.cni.netconf import CniEnv, parse_netconf
from overlay.cni.requests import parse_cni_args, requested_ips, requested_mac, valid_attachments
from overlay.errors import CniError, Code

BASE = {"cniVersion": "1.1.0", "name": "n", "type": "ovs", "vxlanID": 42,
        "ipam": {"subnet": "10.0.0.0/24"}}


def conf(**extra: object):  # type: ignore[no-untyped-def]
    return parse_netconf(json.dumps({**BASE, **extra}).encode())


def env(args: str = "") -> CniEnv:
    return CniEnv("ADD", "c1", "/proc/self/ns/net", "eth0", args)


def test_cni_args_pairs_and_unknown_keys() -> None:
    assert parse_cni_args("IgnoreUnknown=1;IP=10.0.0.9;K8S_POD_NAME=x") == {
        "IgnoreUnknown": "1", "IP": "10.0.0.9", "K8S_POD_NAME": "x"}
    with pytest.raises(CniError) as info:
        parse_cni_args("FOO=1")
    assert info.value.code == Code.INVALID_ENV and "FOO" in info.value.msg
    with pytest.raises(CniError):
        parse_cni_args("IP")


def test_mac_precedence_args_then_runtime_config_then_cni_args() -> None:
    assert requested_mac(conf(), env("MAC=02:00:00:00:00:0a")) == "02:00:00:00:00:0a"
    c = conf(runtimeConfig={"mac": "02:00:00:00:00:0B"})
    assert requested_mac(c, env("MAC=02:00:00:00:00:0a")) == "02:00:00:00:00:0b"
    c = conf(runtimeConfig={"mac": "02:00:00:00:00:0b"}, args={"cni": {"mac": "02:00:00:00:00:0c"}})
    assert requested_mac(c, env()) == "02:00:00:00:00:0c"
    assert requested_mac(conf(), env()) is None
    with pytest.raises(CniError):  # multicast bit set
        requested_mac(conf(runtimeConfig={"mac": "01:00:5e:00:00:01"}), env())


def test_requested_ips_from_all_channels_without_duplicates() -> None:
    c = conf(runtimeConfig={"ips": ["10.0.0.7/24", "fd00::7/64"]}, args={"cni": {"ips": ["10.0.0.8"]}})
    assert requested_ips(c, env("IP=10.0.0.7")) == [ipaddress.ip_address(a) for a in
                                                    ("10.0.0.7", "10.0.0.8", "fd00::7")]
    with pytest.raises(CniError):
        requested_ips(conf(runtimeConfig={"ips": ["not-an-ip"]}), env())


def test_valid_attachments_new_key_old_key_null_and_absent() -> None:
    items = [{"containerID": "a", "ifname": "eth0"}]
    assert valid_attachments(conf(**{"cni.dev/valid-attachments": items})) == {("a", "eth0")}
    assert valid_attachments(conf(**{"cni.dev/attachments": items})) == {("a", "eth0")}
    assert valid_attachments(conf(**{"cni.dev/valid-attachments": None})) == set()
    assert valid_attachments(conf()) is None


@pytest.mark.parametrize("ipam, ip, words", [
    ({"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}, "10.0.0.1", "the gateway of 10.0.0.0/24"),
    ({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}, "10.0.0.0", "the network address"),
    ({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.255"}, "10.0.0.255", "the broadcast address"),
    ({"subnet": "10.0.0.0/24", "exclude": ["10.0.0.4/30"]}, "10.0.0.5", "in ipam.exclude"),
    # The gateway is the subnet's first address unless the netconf names another.
    ({"subnet": "10.0.0.0/24"}, "10.0.0.1", "the gateway of 10.0.0.0/24"),
    ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.254"}], [{"subnet": "fd00::/64"}]]},
     "10.0.0.254", "the gateway of 10.0.0.0/24"),
])
def test_requested_ips_the_netconf_never_hands_out_are_refused(ipam: dict[str, object], ip: str,
                                                               words: str) -> None:
    # Found by tests/integration/test_fuzz.py: IP=10.0.0.1 got the gateway's own address.
    for c, e in ((conf(ipam=ipam), env(f"IP={ip}")),
                 (conf(ipam=ipam, runtimeConfig={"ips": [ip]}), env()),
                 (conf(ipam=ipam, args={"cni": {"ips": [f"{ip}/24"]}}), env())):
        with pytest.raises(CniError) as info:
            requested_ips(c, e)
        assert info.value.code == Code.REQUESTED_ADDRESS_UNAVAILABLE and words in info.value.msg


def test_requested_ips_next_to_reserved_ones_and_for_delegated_ipam_pass() -> None:
    ipam = {"subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "exclude": ["10.0.0.4/30"]}
    assert requested_ips(conf(ipam=ipam), env("IP=10.0.0.2,10.0.0.8")) == [
        ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.8")]
    v6 = conf(ipam={"subnet": "fd00::/64"})  # IPv6 has no broadcast address
    assert requested_ips(v6, env("IP=fd00::ffff:ffff:ffff:ffff")) == [
        ipaddress.ip_address("fd00::ffff:ffff:ffff:ffff")]
    delegated = conf(ipam={"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"})
    assert requested_ips(delegated, env("IP=10.0.0.1")) == [ipaddress.ip_address("10.0.0.1")]
