"""The etcd allocator's choice of candidates, against an in-memory stand-in for the Store's
three IPAM verbs (etcd's compare-and-create is one dict lookup here)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable

import pytest

from overlay.cni.netconf import parse_netconf
from overlay.errors import CniError, Code
from overlay.ipam.allocator import EtcdIpam
from overlay.model import Address
from overlay.store.records import Holder

CONF = parse_netconf(json.dumps({
    "cniVersion": "1.0.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
    "ipam": {"type": "overlay", "subnet": "10.7.0.0/24"}}).encode())


class Allocations:
    """allocations/allocation/claim_ip/release_ip over a dict; `stale` freezes what allocations() returns,
    as a read that happened before another allocation's claim would."""

    def __init__(self) -> None:
        self.held: dict[Address, Holder] = {}
        self.claims: list[Address] = []
        self.stale: dict[Address, Holder] | None = None
        self.reads = 0
        self.after_read: Callable[[], None] | None = None  # runs once a read has its answer

    def allocations(self, network: str) -> dict[Address, Holder]:
        self.reads += 1
        answer = dict(self.stale if self.stale is not None else self.held)
        if self.after_read is not None:
            hook, self.after_read = self.after_read, None
            hook()
        return answer

    def allocation(self, network: str, ip: Address) -> Holder | None:
        return self.held.get(ip)

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


def test_the_network_is_read_once_not_per_add_or_del() -> None:
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    for i in range(20):
        ipam.allocate("net", f"c{i}/eth0", CONF.ipam)
    for i in range(0, 20, 2):
        ipam.release("net", f"c{i}/eth0")
    got = ipam.allocate("net", "late/eth0", CONF.ipam)[0].address.ip
    assert store.reads == 1
    assert got == ip("10.7.0.2")  # the lowest free again, after the releases
    assert len(store.claims) == 21  # not one transaction lost


def test_addresses_another_host_freed_are_found_before_giving_up() -> None:
    small = parse_netconf(json.dumps({
        "cniVersion": "1.0.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
        "ipam": {"type": "overlay", "subnet": "10.8.0.0/30"}}).encode())  # one address: .2
    store = Allocations()
    store.held[ip("10.8.0.2")] = Holder("x/eth0", "other-host")
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    with pytest.raises(CniError) as err:
        ipam.allocate("net", "a/eth0", small.ipam)
    assert err.value.code == Code.IPAM_EXHAUSTED
    del store.held[ip("10.8.0.2")]  # the other host's container went
    assert ipam.allocate("net", "a/eth0", small.ipam)[0].address.ip == ip("10.8.0.2")


def test_a_restarted_agent_finds_its_own_allocations() -> None:
    store = Allocations()
    EtcdIpam(store=store, host="h").allocate("net", "a/eth0", CONF.ipam)  # type: ignore[arg-type]
    again = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    assert again.held_by("net", "a/eth0") == [ip("10.7.0.2")]
    assert again.allocate("net", "a/eth0", CONF.ipam)[0].address.ip == ip("10.7.0.2")  # a retry
    again.release("net", "a/eth0")
    assert store.held == {}


def test_dual_stack_release_moves_only_its_own_familys_search() -> None:
    dual = parse_netconf(json.dumps({
        "cniVersion": "1.0.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
        "ipam": {"type": "overlay", "ranges": [[{"subnet": "10.7.0.0/24"}],
                                               [{"subnet": "fd00::/120"}]]}}).encode())
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    first = [a.address.ip for a in ipam.allocate("net", "a/eth0", dual.ipam)]
    ipam.allocate("net", "b/eth0", dual.ipam)
    ipam.release("net", "a/eth0")
    assert [a.address.ip for a in ipam.allocate("net", "c/eth0", dual.ipam)] == first


def test_a_refresh_that_read_before_a_release_does_not_bring_the_address_back() -> None:
    # The background refresh reads etcd; a DEL frees the address before that read's answer is
    # applied. The answer still shows the address held: it must neither come back as the
    # owner's (a retried ADD of that owner would be handed an address it does not hold in
    # etcd) nor stay used.
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    [first] = ipam.allocate("net", "a/eth0", CONF.ipam)
    store.after_read = lambda: ipam.release("net", "a/eth0")  # the DEL, mid-refresh
    assert ipam._refresh("net")  # what the ipam-refresh thread runs
    assert ipam.held_by("net", "a/eth0") == [] and store.held == {}
    [again] = ipam.allocate("net", "a/eth0", CONF.ipam)
    assert store.held == {again.address.ip: Holder("a/eth0", "h")}
    assert again.address.ip == first.address.ip  # the lowest free one, free again


def test_a_refresh_still_adds_what_was_freed_before_it_began() -> None:
    store = Allocations()
    ipam = EtcdIpam(store=store, host="h")  # type: ignore[arg-type]
    ipam.allocate("net", "a/eth0", CONF.ipam)
    ipam.release("net", "a/eth0")
    store.held[ip("10.7.0.2")] = Holder("x/eth0", "other")  # another host took it since
    assert ipam._refresh("net")
    [b] = ipam.allocate("net", "b/eth0", CONF.ipam)
    assert b.address.ip == ip("10.7.0.3")
