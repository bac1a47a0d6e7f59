"""Which addresses of a network may be handed out, and in what order they are tried.

Pure logic, no I/O: the etcd allocator asks this module for candidates and lets etcd decide
who wins a race. Candidates come in address order, lowest free first, as Docker and host-local
hand them out, so addresses are predictable; two agents that pick the same one at the same
moment are sorted out by etcd, and the loser moves on to the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set

from overlay.model import Address, AddressRange, Network


def reserved(rng: AddressRange) -> set[Address]:
    """Addresses of a range that are never handed out: network, broadcast and gateway."""
    out: set[Address] = {rng.subnet.network_address}
    if rng.subnet.version == 4:
        out.add(rng.subnet.broadcast_address)
    if rng.gateway is not None:
        out.add(rng.gateway)
    return out


def candidates(rng: AddressRange, used: Set[Address],
               exclude: Sequence[Network] = ()) -> Iterator[Address]:
    """Every address of `rng` that is neither reserved, used nor excluded, lowest first.

    Excluded networks are jumped over, not walked: an IPv6 range may exclude a /64.
    """
    skip = reserved(rng)  # `used` is looked into, not copied: it may hold 50,000 addresses
    make = type(rng.start)  # ip_address(int) would make an IPv4 address of a small IPv6 one
    blocks = sorted((int(n.network_address), int(n.broadcast_address))
                    for n in exclude if n.version == rng.start.version)
    value, end = int(rng.start), int(rng.end)
    while value <= end:
        jump = next((last for first, last in blocks if first <= value <= last), None)
        if jump is not None:
            value = jump + 1
            continue
        addr = make(value)
        if addr not in skip and addr not in used:
            yield addr
        value += 1
