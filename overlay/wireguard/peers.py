"""Which WireGuard peers a host should have, from the other hosts' records in etcd.

A host record is untrusted input (any holder of an etcd credential can write one). A peer is
usable only if its record carries a well-formed public key, a WireGuard address inside this
cluster's wireguard_subnet that no other host claims, and a port; the endpoint it is reached at
is the VTEP the reconciler already verified, never an address of the record's own choosing.
Anything else makes the host *not a peer*: the encrypted networks then send it nothing
(overlay/agent/encryption.py), which is the fail-closed answer to a missing or bad key.

Addresses: wireguard_subnet (100.64.0.0/16 by default) plus the host part of the VTEP, so a
host's WireGuard address is known from its VTEP alone and stays the same across restarts and
key rotations (the flows towards it, which name it as tun_dst, do not change on rotation).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from overlay.wireguard import keys


@dataclass(frozen=True)
class Peer:
    host: str
    public_key: str   # base64
    address: str      # its WireGuard address (the tun_dst of encrypted networks' VXLAN)
    endpoint: str     # its VTEP: where its WireGuard packets are sent
    port: int


class NotAPeer(ValueError):
    """The record does not make a usable peer; the message says why (for logs and doctor)."""


def wg_address(subnet: str, vtep: str) -> str:
    """The WireGuard address of the host with this VTEP: the subnet plus the VTEP's host part.

    100.64.0.0/16 and 192.168.56.11 -> 100.64.56.11. Hosts whose VTEPs agree in those low
    bits would collide; the agent refuses to start then (and peers refuse the second claim)."""
    net = ipaddress.IPv4Network(subnet)
    host_bits = int(ipaddress.IPv4Address(vtep)) & int(net.hostmask)
    if host_bits in (0, int(net.hostmask)):
        raise ValueError(f"VTEP {vtep} gives the network or broadcast address of {subnet}")
    return str(net.network_address + host_bits)


def parse_peer(host: str, obj: dict[str, Any], vtep: str, subnet: str) -> Peer:
    """The peer a host record describes; NotAPeer if it cannot be used."""
    public = obj.get("wg_public_key", "")
    if not public:
        raise NotAPeer(f"host {host} publishes no WireGuard key")
    if keys.decode_public(public) is None:
        raise NotAPeer(f"host {host} publishes an unusable WireGuard key {str(public)[:50]!r}")
    address = obj.get("wg_address")
    try:
        expected = wg_address(subnet, vtep)
    except ValueError as exc:
        raise NotAPeer(f"host {host}: {exc}") from None
    if address != expected:
        raise NotAPeer(f"host {host} claims WireGuard address {str(address)[:40]!r}; its VTEP "
                       f"{vtep} gives {expected} in {subnet}")
    port = obj.get("wg_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise NotAPeer(f"host {host} publishes no usable WireGuard port ({str(port)[:20]!r})")
    return Peer(host, public, expected, vtep, port)


@dataclass(frozen=True)
class PeerChanges:
    add: tuple[Peer, ...]      # new peers, or peers whose key, endpoint or port changed
    remove: tuple[Peer, ...]   # peers to take off the device (by their old key)


def diff(have: dict[str, Peer], want: dict[str, Peer]) -> PeerChanges:
    """What turns the device's peers (`have`, by host) into `want`. A peer whose key changed
    (a rotation) is removed under its old key and added under the new one."""
    add, remove = [], []
    for host, peer in want.items():
        old = have.get(host)
        if old == peer:
            continue
        if old is not None and old.public_key != peer.public_key:
            remove.append(old)
        add.append(peer)
    remove += [peer for host, peer in have.items() if host not in want]
    return PeerChanges(tuple(add), tuple(remove))


def duplicate_keys(peers: dict[str, Peer], own_key: str) -> set[str]:
    """Hosts whose public key another host (or this one) also publishes. WireGuard routes by
    key, so two hosts with one key cannot both be peers: a stolen credential could otherwise
    publish a victim's key for a host it controls and take over the victim's sessions. All
    of them are dropped (none can be told apart) and reported."""
    seen: dict[str, list[str]] = {}
    for host, peer in peers.items():
        seen.setdefault(peer.public_key, []).append(host)
    out = {h for hosts in seen.values() if len(hosts) > 1 for h in hosts}
    out |= set(seen.get(own_key, ()))
    return out
