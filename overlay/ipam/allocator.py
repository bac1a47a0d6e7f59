"""Cluster-wide unique IP allocation, backed by etcd.

An allocation is one key, /overlay/v1/ipam/<network>/<ip> -> {"owner": "<container>/<if>",
"host": "<host>"}, created only if absent in an etcd transaction. etcd's linearizable compare
is the whole concurrency story: two agents that pick the same address race on the same key and
exactly one wins; the loser picks again. Allocations have no lease, so an agent restart never
frees an address. The host is recorded so that GC on one host never frees another host's.

Within one agent, concurrent ADDs of a network would all read the same allocations and race
for the same lowest free address, one etcd transaction lost per rival: ten ADDs at once cost
up to 55 transactions instead of 10. Each candidate is therefore marked as tried before its
transaction, and the agent's other allocations pass over marked addresses; etcd still decides
between agents. A mark is dropped when the address is released here, or after RECENT_SECONDS
(by then every allocation that read the prefix before the claim has finished).

One address comes from each range set of the netconf (one IPv4 and one IPv6 set make a
dual-stack container). A requested address (runtimeConfig/args `ips`, CNI_ARGS IP) is taken for
the set whose ranges contain it, or the call fails: the runtime asked for that one.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.cni.netconf import Address, AddressRange, IpamConfig
from overlay.errors import CniError, Code
from overlay.ipam.pool import candidates
from overlay.store.etcd import Store
from overlay.store.records import Holder


@dataclass(frozen=True)
class Assigned:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: Address | None


def _range_for(ip: Address, rset: tuple[AddressRange, ...]) -> AddressRange | None:
    for rng in rset:
        if ip in rng.subnet and rng.start <= ip <= rng.end:  # type: ignore[operator]
            return rng
    return None


def _assigned(ip: Address, rng: AddressRange) -> Assigned:
    return Assigned(ipaddress.ip_interface(f"{ip}/{rng.subnet.prefixlen}"), rng.gateway)


RECENT_SECONDS = 10.0


class EtcdIpam:
    def __init__(self, *, store: Store, host: str) -> None:
        self._store = store
        self._host = host
        self._lock = threading.Lock()
        self._tried: dict[tuple[str, Address], float] = {}  # (network, ip) -> when (monotonic)

    def _mark(self, network: str, ip: Address) -> bool:
        """Mark `ip` as tried by this agent; False if another allocation here tried it lately."""
        now = time.monotonic()
        with self._lock:
            if len(self._tried) > 64:  # forget old marks; the dict stays tiny
                self._tried = {k: t for k, t in self._tried.items()
                               if now - t < RECENT_SECONDS}
            when = self._tried.get((network, ip))
            if when is not None and now - when < RECENT_SECONDS:
                return False
            self._tried[(network, ip)] = now
            return True

    def _unmark(self, network: str, ip: Address) -> None:
        with self._lock:
            self._tried.pop((network, ip), None)

    def allocate(self, network: str, owner: str, ipam: IpamConfig,
                 requested: Sequence[Address] = ()) -> list[Assigned]:
        """Reserve one address per range set for `owner`; again for the same owner, the same.

        All-or-nothing: if a later set fails, the addresses taken for earlier sets are freed.
        """
        held = self._store.allocations(network)
        mine = {ip for ip, h in held.items() if h.owner == owner}
        unplaced = [ip for ip in requested
                    if not any(_range_for(ip, rset) for rset in ipam.range_sets)]
        if unplaced:
            raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE,
                           f"requested address {unplaced[0]} is in none of the network's ranges")
        taken: list[Address] = []
        try:
            return [self._one(network, owner, rset, ipam, held, mine, requested, taken)
                    for rset in ipam.range_sets]
        except BaseException:
            for ip in taken:
                self._store.release_ip(network, ip, Holder(owner, self._host))
                self._unmark(network, ip)
            raise

    def _one(self, network: str, owner: str, rset: tuple[AddressRange, ...], ipam: IpamConfig,
             held: dict[Address, Holder], mine: set[Address], requested: Sequence[Address],
             taken: list[Address]) -> Assigned:
        holder = Holder(owner, self._host)
        for ip in mine:  # a retried ADD: keep what this owner already holds in this set
            rng = _range_for(ip, rset)
            if rng is not None:
                return _assigned(ip, rng)
        for ip in requested:
            rng = _range_for(ip, rset)
            if rng is None:
                continue
            if not self._store.claim_ip(network, ip, holder):
                raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE,
                               f"requested address {ip} is already in use in {network!r}",
                               f"held by {held.get(ip, Holder('?', '?')).owner}")
            taken.append(ip)
            return _assigned(ip, rng)
        for rng in rset:
            used = {ip for ip in held if ip in rng.subnet}
            for ip in candidates(rng, used, ipam.exclude):
                if not self._mark(network, ip):
                    continue  # another ADD on this host is claiming it, or just did
                if self._store.claim_ip(network, ip, holder):
                    taken.append(ip)
                    return _assigned(ip, rng)
        raise CniError(Code.IPAM_EXHAUSTED, f"network {network!r} has no free address left",
                       "ranges: " + ", ".join(f"{r.start}-{r.end}" for r in rset))

    def held_by(self, network: str, owner: str) -> list[Address]:
        return sorted((ip for ip, h in self._store.allocations(network).items() if h.owner == owner),
                      key=lambda ip: (ip.version, int(ip)))

    def release(self, network: str, owner: str) -> None:
        """Free every address `owner` holds in `network`; a no-op when it holds none."""
        for ip, holder in self._store.allocations(network).items():
            if holder.owner == owner:
                self._store.release_ip(network, ip, holder)
                self._unmark(network, ip)
