"""The ground floor's rules, each written once (overlay/model.py). Trace's use of the MAC
rule: tests/unit/test_trace_reasons.py::test_address_nobody_has_is_unknown."""

import ipaddress

from overlay import model
from overlay.cli.trace_walk import Step


def test_container_mac_follows_its_address() -> None:
    assert model.mac_for(ipaddress.ip_address("10.0.0.3")) == "0a:58:0a:00:00:03"
    assert model.mac_for(ipaddress.ip_address("fd00::a:1")) == "0a:58:00:0a:00:01"


def test_mtu_is_the_netconfs_or_the_underlays_less_vxlan() -> None:
    assert model.container_mtu(None, 1500) == 1450
    assert model.container_mtu(1400, 1500) == 1400


def test_table_names_come_from_the_model() -> None:
    assert model.TABLE_NAMES == {0: "classify", 10: "arp", 20: "forward", 30: "deliver",
                                 12: "egress_policy", 13: "egress_commit",
                                 90: "ingress_policy", 91: "ingress_commit",
                                 92: "ingress_deliver"}
    assert Step(model.FORWARD, "", 0, "").table_name == "forward"
    assert Step(99, "", 0, "").table_name == "table 99"

