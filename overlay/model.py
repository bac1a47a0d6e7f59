"""The ground floor: the types and rules every other package agrees on.

Addresses, routes and address ranges, VNI limits, the MAC and MTU rules, the flow table numbers
and their names. Only the standard library (and overlay/errors.py) below it, so that store,
netlink, IPAM, the dataplane and the CNI service can all build on it without importing one
another: `cni/netconf.py` parses the runtime's JSON into these types, and nothing below the CNI
service needs the parser (scripts/check_layers.py keeps it so).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A VXLAN Network Identifier is 24 bits; 0 is left out (some switches treat it as "none").
VNI_MIN, VNI_MAX = 1, 16_777_215

BUILTIN_IPAM = "overlay"  # ipam.type of the etcd allocator; any other names a delegate plugin

# Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8: what the tunnel adds to a container's frame.
VXLAN_OVERHEAD = 50
# What WireGuard adds around the VXLAN packet of an encrypted network (docs/encryption.md):
# outer IP 20 (IPv6: 40) + UDP 8 + WireGuard's header 16 + its authentication tag 16.
WIREGUARD_OVERHEAD_V4, WIREGUARD_OVERHEAD_V6 = 60, 80

# The flow pipeline's tables (dataplane/flows.py says what each one does) and the names the
# docs, `overlayctl trace` and the metrics use for them.
CLASSIFY, ARP, FORWARD, DELIVER = 0, 10, 20, 30
# Network policy (dataplane/policy_flows.py): egress rules of a source, then its commit; ingress
# rules of a destination, its commit, and delivery once allowed.
EGRESS, EGRESS_COMMIT, INGRESS, INGRESS_COMMIT, INGRESS_OUT = 12, 13, 90, 91, 92
TABLE_NAMES = {CLASSIFY: "classify", ARP: "arp", FORWARD: "forward", DELIVER: "deliver",
               EGRESS: "egress_policy", EGRESS_COMMIT: "egress_commit",
               INGRESS: "ingress_policy", INGRESS_COMMIT: "ingress_commit",
               INGRESS_OUT: "ingress_deliver"}


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


def container_mtu(configured: int | None, underlay_mtu: int, *, encrypted: bool = False,
                  ipv6_underlay: bool = False) -> int:
    """The netconf's `mtu` if it gives one, else what fits in a VXLAN packet on the underlay,
    itself inside a WireGuard packet for an encrypted network (1390 on a 1500 IPv4 underlay)."""
    if configured:
        return configured
    sealed = (WIREGUARD_OVERHEAD_V6 if ipv6_underlay else WIREGUARD_OVERHEAD_V4) if encrypted else 0
    return underlay_mtu - VXLAN_OVERHEAD - sealed


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    """One attachment's name in the dataplane's intent (etcd's key adds a prefix: store/records.py)."""
    return f"{network}/{container_id}/{ifname}"


# Kubernetes' names, as a kubelet passes them in CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME):
# a namespace is an RFC 1123 DNS label, a pod's name an RFC 1123 DNS subdomain. The same rules
# as the API server's, so any pod a cluster runs is accepted, and nothing else is recorded.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX = 63, 253


def dns_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS label (a Kubernetes namespace), or None when it is one."""
    if not _DNS_LABEL.fullmatch(value):
        return (f"{value[:80]!r} is not a DNS label: 1-{DNS_LABEL_MAX} characters of a-z 0-9 -, "
                f"beginning and ending with a letter or digit")
    return None


def dns_subdomain_problem(value: str) -> str | None:
    """Why `value` is not a DNS subdomain (a Kubernetes pod name), or None when it is one."""
    if len(value) > DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN.fullmatch(value):
        return (f"{value[:80]!r} is not a DNS subdomain: at most {DNS_SUBDOMAIN_MAX} "
                f"characters, dot-separated labels of a-z 0-9 -, each beginning and ending "
                f"with a letter or digit")
    return None
