import ipaddress

from overlay.cni.netconf import Route
from overlay.cni.result import Attachment, build_result

ATT = Attachment(host_ifname="ovl0123456789a", host_mac="aa:00:00:00:00:01", ifname="eth0",
                 mac="02:00:00:00:00:01", netns="/var/run/netns/c0",
                 address=ipaddress.ip_interface("10.0.0.5/24"),
                 gateway=ipaddress.ip_address("10.0.0.254"),
                 routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.0.0.254")),),
                 mtu=1450)


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


def test_result_0_4_0_has_ip_version() -> None:
    assert build_result("0.4.0", ATT)["ips"] == [
        {"version": "4", "address": "10.0.0.5/24", "interface": 1, "gateway": "10.0.0.254"}]


def test_result_0_2_0_has_the_old_shape() -> None:
    assert build_result("0.2.0", ATT) == {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.0.0.5/24", "gateway": "10.0.0.254",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.254"}]},
        "dns": {},
    }
