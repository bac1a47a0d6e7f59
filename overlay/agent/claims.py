"""Who holds each address and MAC of a network, when several endpoint records claim one.

Two records of one network naming the same address or MAC are a conflict: a container moved
(the old record's delete and the new one's put arrive in either order), a stale record of a
dead host names an address now reused, or a host lies. OpenFlow can hold one answer only, and
every host must pick the same one, so the rule depends on etcd alone: the claim created first
(lowest create revision; the key breaks a tie within one transaction) holds it. One exception:
on a host, its own containers always win, whatever a record says. A claimant whose host is not
live does not count (the next one holds the value meanwhile), so a dead host's leftover record
cannot keep an address from its new owner.

An endpoint record is installed only if it holds every one of its claims; one that loses any
is held back whole (a MAC with half its addresses would be worse than none). When the holder
goes away, the next claimant in line is re-evaluated and takes over. Conflicts are reported
when they arise (a log line and a counter) and listed for `overlayctl doctor` while they last.

Memory: nearly every value has one claimant, stored as the bare key string (which the
reconciler holds anyway); only contested values pay for a list.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

Rank = Callable[[str], tuple[int, int, str]]  # key -> (0 if local else 1, create revision, key)
Eligible = Callable[[str], bool]              # key -> does its claim count now (live host)?


class Claims:
    """Not thread-safe: the reconciler calls it under its lock."""

    def __init__(self, *, rank: Rank, eligible: Eligible) -> None:
        self._rank = rank
        self._eligible = eligible
        self._held: dict[str, dict[str, str | list[str]]] = {}  # network -> value -> key(s)
        self._contested = 0  # values with a list: none (the rule) makes wins() free

    def add(self, key: str, network: str, values: Iterable[str]) -> tuple[list[str], list[str]]:
        """Record `key`'s claims. Returns (other claimants whose standing may have changed,
        the values that became or stayed contested by this claim)."""
        held = self._held.setdefault(network, {})
        others: list[str] = []
        contested: list[str] = []
        for value in values:
            current = held.get(value)
            if current is None:
                held[value] = key
            elif isinstance(current, str):
                if current != key:
                    held[value] = [current, key]
                    self._contested += 1
                    others.append(current)
                    contested.append(value)
            elif key not in current:
                others += current
                current.append(key)
                contested.append(value)
        return others, contested

    def remove(self, key: str, network: str, values: Iterable[str]) -> list[str]:
        """Withdraw `key`'s claims (idempotent); returns the claimants left on contested
        values, whose standing may have changed."""
        held = self._held.get(network)
        if held is None:
            return []
        others: list[str] = []
        for value in values:
            current = held.get(value)
            if current == key:
                del held[value]
            elif isinstance(current, list) and key in current:
                current.remove(key)
                others += current
                if len(current) == 1:
                    held[value] = current[0]
                    self._contested -= 1
        if not held:
            del self._held[network]
        return others

    @property
    def contested(self) -> int:
        """How many values have more than one claimant (0 nearly always)."""
        return self._contested

    def holder(self, network: str, value: str) -> str | None:
        """The claimant that holds `value` now: the first eligible one in rank order."""
        current = self._held.get(network, {}).get(value)
        if current is None or isinstance(current, str):
            return current
        return min(filter(self._eligible, current), key=self._rank, default=None)

    def wins(self, key: str, network: str, values: Iterable[str]) -> bool:
        """Does `key` hold every one of `values`? (Free while nothing is contested.)"""
        if not self._contested:
            return True
        held = self._held.get(network, {})
        for value in values:
            current = held.get(value)
            if isinstance(current, list) and self.holder(network, value) != key:
                return False
        return True

    def rivals(self, key: str, network: str, values: Iterable[str]) -> list[str]:
        """The other claimants of `key`'s contested values."""
        held = self._held.get(network, {})
        out: list[str] = []
        for value in values:
            current = held.get(value)
            if isinstance(current, list):
                out += (k for k in current if k != key)
        return out

    def conflicts(self) -> list[tuple[str, str, list[str], str | None]]:
        """Every contested value: (network, value, claimants in rank order, holder)."""
        return [(network, value, sorted(current, key=self._rank), self.holder(network, value))
                for network, held in sorted(self._held.items())
                for value, current in sorted(held.items()) if isinstance(current, list)]


def claimed_values(ips: tuple[str, ...], mac: str) -> tuple[str, ...]:
    """The values an endpoint claims in its network: its addresses and its MAC.

    A MAC of the form 0a:58:<4 bytes> (what the agent derives from an address:
    overlay/model.py mac_for) is claimed as that IPv4 address: the two namespaces map one to
    one, so a claim on one is a claim on the other, and the usual endpoint (address x, MAC
    0a:58:x) makes one claim instead of two, which saves an index entry per endpoint (2.6 MB at
    50,000)."""
    if mac.startswith("0a:58:"):
        alias = socket.inet_ntoa(bytes.fromhex(mac[6:].replace(":", "")))
        return ips if alias in ips else (*ips, alias)
    return (*ips, mac)
