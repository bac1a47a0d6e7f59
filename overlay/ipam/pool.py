"""Which addresses of a network may be handed out, and in what order they are tried.

Pure logic, no I/O: the etcd allocator asks this module for candidates and lets etcd decide
who wins a race. Candidates start at a per-owner offset rather than at the range start, so
agents on different hosts that allocate at the same moment usually try different addresses
and rarely collide in etcd.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator, Set

from overlay.cni.netconf import Address, AddressRange


def reserved(rng: AddressRange) -> set[Address]:
    """Addresses of a range that are never handed out: network, broadcast and gateway."""
    out: set[Address] = {rng.subnet.network_address}
    if rng.subnet.version == 4:
        out.add(rng.subnet.broadcast_address)
    if rng.gateway is not None:
        out.add(rng.gateway)
    return out


def range_size(rng: AddressRange) -> int:
    return int(rng.end) - int(rng.start) + 1


def candidates(rng: AddressRange, owner: str, used: Set[Address]) -> Iterator[Address]:
    """Every free address of `rng`, starting at an offset derived from `owner`, wrapping once."""
    size = range_size(rng)
    skip = reserved(rng) | set(used)
    offset = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big") % size
    first = int(rng.start)
    for i in range(size):
        addr = ipaddress.ip_address(first + (offset + i) % size)
        if addr not in skip:
            yield addr
