import ipaddress

from overlay.cni.result import Attachment, build_result
from overlay.ipam.allocator import Assigned
from overlay.model import Route

V4 = Assigned(ipaddress.ip_interface("10.0.0.5/24"), ipaddress.ip_address("10.0.0.254"))
V6 = Assigned(ipaddress.ip_interface("fd00::5/64"), None)
DEFAULT = Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.0.0.254"))
ATT = Attachment(host_ifname="ovl0123456789a", host_mac="aa:00:00:00:00:01", ifname="eth0",
                 mac="02:00:00:00:00:01", netns="/var/run/netns/c0", addresses=[V4],
                 routes=[DEFAULT], mtu=1450)
DUAL = Attachment(**{**ATT.__dict__, "addresses": [V4, V6]})


def test_result_1_0_0() -> None:
    assert build_result("1.0.0", ATT) == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "ovl0123456789a", "mac": "aa:00:00:00:00:01"},
                       {"name": "eth0", "mac": "02:00:00:00:00:01",
                        "sandbox": "/var/run/netns/c0"}],
        "ips": [{"address": "10.0.0.5/24", "interface": 1, "gateway": "10.0.0.254"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.254"}],
        "dns": {},
    }


def test_result_1_1_0_reports_mtu() -> None:
    assert build_result("1.1.0", ATT)["interfaces"][1]["mtu"] == 1450
    assert "mtu" not in build_result("1.0.0", ATT)["interfaces"][1]


def test_result_0_4_0_has_ip_versions() -> None:
    assert build_result("0.4.0", DUAL)["ips"] == [
        {"version": "4", "address": "10.0.0.5/24", "interface": 1, "gateway": "10.0.0.254"},
        {"version": "6", "address": "fd00::5/64", "interface": 1}]


def test_result_0_2_0_has_the_old_shape() -> None:
    assert build_result("0.2.0", DUAL) == {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.0.0.5/24", "gateway": "10.0.0.254",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.254"}]},
        "ip6": {"ip": "fd00::5/64"},
        "dns": {},
    }


def test_prev_result_is_kept_and_our_indexes_follow_it() -> None:
    prev = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "br0"}, {"name": "net1", "sandbox": "/var/run/netns/c0"}],
            "ips": [{"address": "192.168.1.2/24", "interface": 1}],
            "routes": [{"dst": "192.168.0.0/16"}], "dns": {"nameservers": ["192.168.1.1"]}}
    merged = build_result("1.0.0", ATT, prev)
    assert [i["name"] for i in merged["interfaces"]] == ["br0", "net1", "ovl0123456789a", "eth0"]
    assert merged["ips"] == [{"address": "192.168.1.2/24", "interface": 1},
                             {"address": "10.0.0.5/24", "interface": 3, "gateway": "10.0.0.254"}]
    assert merged["routes"] == [{"dst": "192.168.0.0/16"},
                                {"dst": "0.0.0.0/0", "gw": "10.0.0.254"}]
    assert merged["dns"] == {"nameservers": ["192.168.1.1"]}
    assert prev["interfaces"] == [{"name": "br0"}, {"name": "net1", "sandbox": "/var/run/netns/c0"}]

