"""The ground floor: the types and rules every other package agrees on.

Addresses, routes and address ranges, VNI limits, the MAC and MTU rules, the flow table numbers
and their names. Only the standard library (and overlay/errors.py) below it, so that store,
netlink, IPAM, the dataplane and the CNI service can all build on it without importing one
another: `cni/netconf.py` parses the runtime's JSON into these types, and nothing below the CNI
service needs the parser (scripts/check_layers.py keeps it so).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A VXLAN Network Identifier is 24 bits; 0 is left out (some switches treat it as "none").
VNI_MIN, VNI_MAX = 1, 16_777_215

BUILTIN_IPAM = "overlay"  # ipam.type of the etcd allocator; any other names a delegate plugin

# Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8: what the tunnel adds to a container's frame.
VXLAN_OVERHEAD = 50

# The flow pipeline's tables (dataplane/flows.py says what each one does) and the names the
# docs, `overlayctl trace` and the metrics use for them.
CLASSIFY, ARP, FORWARD, DELIVER = 0, 10, 20, 30
TABLE_NAMES = {CLASSIFY: "classify", ARP: "arp", FORWARD: "forward", DELIVER: "deliver"}


@dataclass(frozen=True)
class Route:
    dst: Network
    gw: Address | None = None


@dataclass(frozen=True)
class AddressRange:
    """One range of one subnet, as in host-local's `ranges`; bounds are inclusive."""

    subnet: Network
    start: Address
    end: Address
    gateway: Address | None


@dataclass(frozen=True)
class IpamConfig:
    """`type` "overlay" is the built-in etcd allocator; any other names a plugin to delegate to.

    Each range set yields one address (as host-local does), so one IPv4 and one IPv6 set give
    a dual-stack container.
    """

    type: str
    range_sets: tuple[tuple[AddressRange, ...], ...] = ()
    routes: tuple[Route, ...] = ()
    exclude: tuple[Network, ...] = ()
    # `routes` absent: the container gets a default route via the gateway. Present (even
    # empty): exactly those routes, as the netconf says otherwise.
    routes_given: bool = False

    @property
    def delegated(self) -> bool:
        return self.type != BUILTIN_IPAM

    @property
    def ranges(self) -> tuple[AddressRange, ...]:
        return tuple(r for rset in self.range_sets for r in rset)


def mac_for(ip: Address) -> str:
    """The container's MAC, derived from its address: 0a:58 and the address's last 4 bytes.

    An address handed to a new container then comes with the MAC its predecessor had, so
    peers' ARP caches stay right and nobody talks to a dead MAC for the seconds it takes the
    kernel to notice. 0x0a is a locally administered unicast prefix; networks whose subnets
    overlap may share MACs, which the flow table keeps apart by VNI. `overlayctl trace` uses
    the same rule for an on-link address no endpoint holds.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed[-4:])


def container_mtu(configured: int | None, underlay_mtu: int) -> int:
    """The netconf's `mtu` if it gives one, else what fits in a VXLAN packet on the underlay."""
    return configured or underlay_mtu - VXLAN_OVERHEAD


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    """One attachment's name in the dataplane's intent (etcd's key adds a prefix: store/records.py)."""
    return f"{network}/{container_id}/{ifname}"
