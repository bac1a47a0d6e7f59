"""The port external_ids schema: what ADD writes is what every reader reads back."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest

from overlay.agent.observe import local_attachments
from overlay.agent.startup import encrypted_networks, local_endpoints
from overlay.dataplane.flows import LocalPort
from overlay.ovs import portschema
from overlay.ovs.ovsdb import Ovsdb, PortInfo

IDS = portschema.PortIds(portschema.PortOwner("red", "c0", "eth0", "/run/netns/c0"), 42,
                         ("10.0.0.2", "fd00::2"), "0a:58:0a:00:00:02", "dhcp", True)


class FakeOvsdb:
    def __init__(self, ports: list[PortInfo]) -> None:
        self._ports = ports

    def ports(self, bridge: str) -> list[PortInfo]:
        return self._ports


def fake(*ports: PortInfo) -> Ovsdb:
    return cast(Ovsdb, cast(Any, FakeOvsdb(list(ports))))


def test_round_trip() -> None:
    ext = portschema.encode(IDS)
    assert portschema.decode(ext) == IDS
    assert portschema.owner(ext) == IDS.owner
    assert portschema.network(ext) == "red"
    # The wire format other tools (and older agents' ports) hold: it must not drift.
    assert ext == {"overlay-container-id": "c0", "overlay-ifname": "eth0",
                   "overlay-netns": "/run/netns/c0", "overlay-network": "red",
                   "overlay-vni": "42", "overlay-ip": "10.0.0.2,fd00::2",
                   "overlay-mac": "0a:58:0a:00:00:02", "overlay-ipam": "dhcp",
                   "overlay-dhcp-server": "true", "overlay-encrypted": "false"}


def test_a_port_that_is_not_an_endpoints() -> None:
    gateway = {"overlay-gateway": "red", "overlay-vni": "42"}
    assert portschema.decode(gateway) is None
    assert portschema.owner(gateway) is None
    assert portschema.network(gateway) is None


@pytest.mark.parametrize("broken", [{"overlay-vni": "x"}, {"overlay-mac": None},
                                    {"overlay-network": None}])
def test_an_incomplete_endpoint_port_is_refused(broken: dict[str, str | None]) -> None:
    ext: dict[str, str] = {k: v for k, v in {**portschema.encode(IDS), **broken}.items()
                           if v is not None}
    with pytest.raises(ValueError):
        portschema.decode(ext)


def test_the_agent_rebuilds_local_ports_from_what_add_wrote() -> None:
    ovs = fake(PortInfo("ovl1", 7, portschema.encode(IDS)),
               PortInfo("bad", 8, {**portschema.encode(IDS), "overlay-vni": "x"}),
               PortInfo("early", -1, portschema.encode(IDS)),
               PortInfo("vxlan0", 1, {}))
    assert local_endpoints(ovs, "br-int") == {
        "red/c0/eth0": LocalPort(42, "0a:58:0a:00:00:02", ("10.0.0.2", "fd00::2"), 7, True,
                                 True)}
    assert local_attachments(ovs, "br-int") == [("red", "c0", "eth0")] * 3


def test_networks_attached_encrypted_are_read_back_from_the_ports() -> None:
    secret = replace(IDS, owner=replace(IDS.owner, network="secret", container_id="c1"),
                     encrypted=True)
    ovs = fake(PortInfo("ovl1", 7, portschema.encode(IDS)),
               PortInfo("ovl2", 8, portschema.encode(secret)),
               PortInfo("bad", 9, {**portschema.encode(secret), "overlay-vni": "x"}),
               PortInfo("vxlan0", 1, {}))
    assert encrypted_networks(ovs, "br-int") == {"secret"}
    # A port an older agent wrote (no such key) counts as not encrypted: records still pin.
    old = {k: v for k, v in portschema.encode(secret).items() if k != portschema.ENCRYPTED}
    assert portschema.decode(old) == replace(secret, encrypted=False)
