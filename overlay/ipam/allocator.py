"""Cluster-wide unique IP allocation, backed by etcd.

An allocation is one key, /overlay/v1/ipam/<network>/<ip> -> {"owner": "<container>/<if>",
"host": "<host>"}, created only if absent in an etcd transaction. etcd's linearizable compare
is the whole concurrency story: two agents that pick the same address race on the same key and
exactly one wins; the loser picks again. Allocations have no lease, so an agent restart never
frees an address. The host is recorded so that GC on one host never frees another host's.

Reading the network's allocations on every ADD and DEL cost ~0.9 s at 50,000 addresses (and
grew with the network), and concurrent ADDs that read the same allocations raced each other for
the same lowest free address (ten at once: up to 55 transactions instead of 10). So the agent
reads a network's allocations once (its first ADD, DEL or CHECK there) and then keeps what it
knows (`_Known`): its own allocations exactly (only this host writes them), the other hosts'
as last read, refreshed in the background every REFRESH_SECONDS and before giving up as
exhausted. An address an ADD here is about to claim counts as used at once, so the agent's
other ADDs pass over it; a claim lost to another host marks the address used. Where the lowest
free search starts is remembered per range, so an ADD does not walk the used addresses again.
etcd's compare still decides every race; a stale view only costs a lost transaction, or an
address another host freed being handed out a little later.

One address comes from each range set of the netconf (one IPv4 and one IPv6 set make a
dual-stack container). A requested address (runtimeConfig/args `ips`, CNI_ARGS IP) is taken for
the set whose ranges contain it, or the call fails: the runtime asked for that one.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from overlay.errors import CniError, Code
from overlay.ipam.pool import candidates
from overlay.model import Address, AddressRange, IpamConfig
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


REFRESH_SECONDS = 30.0


@dataclass
class _Known:
    """One network's allocations as this agent knows them."""

    ours: dict[str, set[Address]]   # this host's owners -> their addresses (kept exactly)
    used: set[Address]              # ours, the other hosts' as last read, claims under way
    read_at: float
    refreshing: bool = False
    claiming: set[Address] = field(default_factory=set)  # claims under way here
    # Reads of etcd under way, and the addresses this host freed while one was (with a count
    # of frees, to tell which came after which read began): a read that began before a DEL
    # freed an address still shows it, and must not bring it back (_refresh).
    reads: int = 0
    frees: int = 0
    freed: dict[Address, int] = field(default_factory=dict)
    cursors: dict[tuple[Address, Address], Address] = field(default_factory=dict)


class EtcdIpam:
    def __init__(self, *, store: Store, host: str) -> None:
        self._store = store
        self._host = host
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}

    # --- what this agent knows of a network's allocations ------------------------------------

    def _read(self, network: str) -> tuple[dict[str, set[Address]], set[Address]]:
        """(this host's owners -> addresses, every allocated address)."""
        ours: dict[str, set[Address]] = {}
        held = self._store.allocations(network)
        for ip, holder in held.items():
            if holder.host == self._host:
                ours.setdefault(holder.owner, set()).add(ip)
        return ours, set(held)

    def _view(self, network: str) -> _Known:
        """The network's _Known, read now if this agent has none, refreshed in the background
        if it is older than REFRESH_SECONDS."""
        with self._lock:
            known = self._known.get(network)
            stale = known is not None and not known.refreshing and \
                time.monotonic() - known.read_at > REFRESH_SECONDS
            if stale and known is not None:
                known.refreshing = True
        if known is None:
            ours, used = self._read(network)
            with self._lock:
                known = self._known.setdefault(network, _Known(ours, used, time.monotonic()))
        elif stale:
            threading.Thread(target=self._refresh, args=(network,), daemon=True,
                             name=f"ipam-refresh:{network}").start()
        return known

    def _refresh(self, network: str) -> bool:
        """Read the other hosts' allocations again. Our own are kept as they are (a claim made
        while the read was under way must not be lost); any of ours the read shows that we did
        not know are added, except those freed here since the read began: it may have read
        them before the DEL's transaction. Returns False if etcd could not be read."""
        with self._lock:
            known = self._known[network]
            known.reads += 1
            began = known.frees
        try:
            ours, used = self._read(network)
        except CniError:
            ok = False
        else:
            ok = True
        with self._lock:
            known.refreshing = False
            known.reads -= 1
            since = {ip for ip, n in known.freed.items() if n > began}
            if not known.reads:
                known.freed.clear()  # no read left that began before these frees
            if not ok:
                return False
            for owner, ips in ours.items():
                if ips - since:
                    known.ours.setdefault(owner, set()).update(ips - since)
            known.used = (used - since).union(known.claiming, *known.ours.values())
            known.read_at = time.monotonic()
            known.cursors.clear()  # addresses below a cursor may have been freed
        return True

    def _claim(self, network: str, known: _Known, ip: Address, holder: Holder) -> bool:
        with self._lock:
            if ip in known.used:
                return False  # another ADD here took it meanwhile
            known.used.add(ip)  # used from now on for every other ADD here
            known.claiming.add(ip)
        try:
            won = self._store.claim_ip(network, ip, holder)
        except BaseException:
            with self._lock:
                known.claiming.discard(ip)
                known.used.discard(ip)  # we do not know; the next read will tell
            raise
        with self._lock:
            known.claiming.discard(ip)
            if won:
                known.ours.setdefault(holder.owner, set()).add(ip)
        return won  # lost: another host holds it, and it stays used

    def _forget(self, network: str, owner: str, ip: Address) -> None:
        with self._lock:
            known = self._known.get(network)
            if known is None:
                return
            ips = known.ours.get(owner)
            if ips is not None:
                ips.discard(ip)
                if not ips:
                    del known.ours[owner]
            known.used.discard(ip)
            if known.reads:  # a read under way may still show it (_refresh)
                known.frees += 1
                known.freed[ip] = known.frees
            for key, cursor in list(known.cursors.items()):
                if key[0].version == ip.version and \
                        key[0] <= ip < cursor:  # type: ignore[operator]
                    known.cursors[key] = ip  # the lowest free may be this one again

    # --- the verbs -----------------------------------------------------------------------------

    def allocate(self, network: str, owner: str, ipam: IpamConfig,
                 requested: Sequence[Address] = ()) -> list[Assigned]:
        """Reserve one address per range set for `owner`; again for the same owner, the same.

        All-or-nothing: if a later set fails, the addresses taken for earlier sets are freed.
        """
        unplaced = [ip for ip in requested
                    if not any(_range_for(ip, rset) for rset in ipam.range_sets)]
        if unplaced:
            raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE,
                           f"requested address {unplaced[0]} is in none of the network's ranges")
        known = self._view(network)
        with self._lock:
            mine = set(known.ours.get(owner, ()))
        taken: list[Address] = []
        try:
            return [self._one(network, owner, rset, ipam, known, mine, requested, taken)
                    for rset in ipam.range_sets]
        except BaseException:
            for ip in taken:
                self._store.release_ip(network, ip, Holder(owner, self._host))
                self._forget(network, owner, ip)
            raise

    def _one(self, network: str, owner: str, rset: tuple[AddressRange, ...], ipam: IpamConfig,
             known: _Known, mine: set[Address], requested: Sequence[Address],
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
                other = self._store.allocation(network, ip)
                raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE,
                               f"requested address {ip} is already in use in {network!r}",
                               f"held by {other.owner if other else '?'}")
            with self._lock:
                known.ours.setdefault(owner, set()).add(ip)
                known.used.add(ip)
            taken.append(ip)
            return _assigned(ip, rng)
        for attempt in range(2):  # the second after reading the other hosts' again
            for rng in rset:
                key = (rng.start, rng.end)
                with self._lock:
                    start = known.cursors.get(key, rng.start)
                # known.used is only looked into (never copied: 50,000 addresses), and only
                # changed under the lock, one address at a time.
                for ip in candidates(replace(rng, start=start), known.used, ipam.exclude):
                    with self._lock:
                        known.cursors[key] = ip
                    if self._claim(network, known, ip, holder):
                        taken.append(ip)
                        return _assigned(ip, rng)
            if attempt == 0 and not self._refresh(network):
                break
        raise CniError(Code.IPAM_EXHAUSTED, f"network {network!r} has no free address left",
                       "ranges: " + ", ".join(f"{r.start}-{r.end}" for r in rset))

    def allocations(self, network: str) -> dict[Address, Holder]:
        """Every allocation of `network` as etcd has it now, all hosts' (GC, the doctor)."""
        return self._store.allocations(network)

    def held_by(self, network: str, owner: str) -> list[Address]:
        known = self._view(network)
        with self._lock:
            return sorted(known.ours.get(owner, ()), key=lambda ip: (ip.version, int(ip)))

    def release(self, network: str, owner: str) -> None:
        """Free every address `owner` holds in `network`; a no-op when it holds none."""
        known = self._view(network)
        with self._lock:
            ips = set(known.ours.get(owner, ()))
        for ip in ips:
            self._store.release_ip(network, ip, Holder(owner, self._host))
            self._forget(network, owner, ip)
