"""Probes of the switch compare rules as values: port 1 is not port 12, and a fake dump lists
only what its filter selects."""

from __future__ import annotations

from typing import Any, cast

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import Gateway, LocalPort
from overlay.ovs.flow import match
from overlay.ovs.testing import FakeOfctl

GW_MAC = "0e:6f:76:00:00:2a"


def dataplane() -> tuple[Dataplane, FakeOfctl]:
    fake = FakeOfctl()
    dp = Dataplane(ofctl=cast(Any, fake), bridge="br-int", tunnel_ofport=1, held=True)
    dp.release()
    return dp, fake


def test_the_gateway_on_port_12_is_not_the_gateway_on_port_1() -> None:
    dp, _ = dataplane()
    dp.set_gateway(42, Gateway(42, GW_MAC, "10.0.0.254", 12))
    assert dp.switch_has_gateway(Gateway(42, GW_MAC, "10.0.0.254", 12))
    assert not dp.switch_has_gateway(Gateway(42, GW_MAC, "10.0.0.254", 1))


def test_a_port_is_admitted_only_by_its_own_rules() -> None:
    dp, _ = dataplane()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 12))
    assert dp.switch_has(LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 12))
    assert not dp.switch_has(LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 1))


def test_the_fake_dump_honours_its_filter() -> None:
    dp, fake = dataplane()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 12))
    dp.install_endpoint("b", LocalPort(43, "0a:58:0a:00:00:02", ("10.0.0.2",), 1))
    both = fake.dump(20)
    assert {r.match.get("reg0") for r in both} == {None, 42, 43}
    only = fake.dump(20, match(reg0=42, eth_dst="0a:58:0a:00:00:01"))
    assert [r.actions for r in only] == [dp.wanted()[only[0].identity]] and len(only) == 1
    assert fake.dump(0, match(in_port=1)) and all(
        r.match.get("in_port") == 1 for r in fake.dump(0, match(in_port=1)))
