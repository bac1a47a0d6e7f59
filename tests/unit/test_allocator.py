"""The etcd allocator's choice of candidates, against an in-memory stand-in for the Store's
three IPAM verbs (etcd's compare-and-create is one dict lookup here)."""

from __future__ import annotations

import ipaddress
import json

from overlay.cni.netconf import Address, parse_netconf
from overlay.ipam.allocator import EtcdIpam
from overlay.store.records import Holder

CONF = parse_netconf(json.dumps({
    "cniVersion": "1.0.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
    "ipam": {"type": "overlay", "subnet": "10.7.0.0/24"}}).encode())


class Allocations:
    """allocations/claim_ip/release_ip over a dict; `stale` freezes what allocations() returns,
    as a read that happened before another allocation's claim would."""

    def __init__(self) -> None:
        self.held: dict[Address, Holder] = {}
        self.claims: list[Address] = []
        self.stale: dict[Address, Holder] | None = None

    def allocations(self, network: str) -> dict[Address, Holder]:
        return dict(self.stale if self.stale is not None else self.held)

    def claim_ip(self, network: str, ip: Address, holder: Holder) -> bool:
        self.claims.append(ip)
        if ip in self.held:
            return False
        self.held[ip] = holder
        return True

    def release_ip(self, network: str, ip: Address, holder: Holder) -> None:
        if self.held.get(ip) == holder:
            del self.held[ip]


def ip(text: str) -> Address:
    return ipaddress.ip_address(text)


def test_an_allocation_that_read_before_a_claim_here_skips_the_claimed_address() -> None:
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    store.stale = {}  # both read an empty prefix
    first = ipam.allocate("net", "a/eth0", CONF.ipam)
    second = ipam.allocate("net", "b/eth0", CONF.ipam)
    assert [a.address.ip for a in first + second] == [ip("10.7.0.2"), ip("10.7.0.3")]
    assert store.claims == [ip("10.7.0.2"), ip("10.7.0.3")]  # no transaction lost to a rival


def test_another_agents_claim_is_still_settled_by_the_store() -> None:
    store = Allocations()
    store.held[ip("10.7.0.2")] = Holder("elsewhere/eth0", "other-host")
    store.stale = {}  # our read missed it
    got = EtcdIpam(store=store, host="h").allocate("net", "a/eth0", CONF.ipam)  # type: ignore[arg-type]
    assert got[0].address.ip == ip("10.7.0.3")
    assert store.claims == [ip("10.7.0.2"), ip("10.7.0.3")]


def test_a_released_address_is_handed_out_again_at_once() -> None:
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    assert ipam.allocate("net", "a/eth0", CONF.ipam)[0].address.ip == ip("10.7.0.2")
    ipam.release("net", "a/eth0")
    assert ipam.allocate("net", "b/eth0", CONF.ipam)[0].address.ip == ip("10.7.0.2")
