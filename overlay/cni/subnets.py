"""Refusing a network whose subnet would break the host it is attached on.

On every host where a network has a container, its subnet becomes the gateway's address and
a route in the main table (overlay/gateway/kernel.py), and its addresses are handed to
containers. A network on the underlay's subnet therefore gave a container another host's VTEP
address, made the host's own address its gateway and took the underlay route away: the host
lost etcd and every tunnel. So before an ADD creates anything (no allocation, veth, port,
record or gateway yet), every subnet of the netconf (hence its gateway, which lies in the first
one) is compared with what the host and the cluster need, and an overlap is refused with code 7
and a message naming it. Every ADD is checked, not only a network's first one here: the host
or the cluster may have changed since (a new route, a new host's VTEP).

What counts as a conflict, and why:

- **An underlay network**: an address of an interface that is not ours, with its prefix
  (172.31.0.1/24 on br-phy stands for 172.31.0.0/24; loopback's 127.0.0.1/8 counts too).
  Ours are the gateway ports (`ovg<vni>`), whose addresses are other networks' gateways
  (networks may share a subnet, see docs/architecture.md), and the containers' host ends
  (`ovl...`, which carry no address).
- **A VTEP**: any host's VTEP the agent knows (the host records in etcd, and its own).
- **etcd**: an endpoint given as an address (names are not resolved here).
- **A route that is not ours** in the main table: one whose protocol is not RTPROT_OVERLAY
  and that does not go out of a gateway port. Its destination conflicts when it overlaps the
  subnet, covering it or covered by it, except a default route (0.0.0.0/0, ::/0), which
  overlaps everything and is no conflict: a container's own subnet stays inside the overlay
  by design. The next hop of any route, the default route's included, conflicts when it lies
  in the subnet: the host would send its own traffic into the overlay.

Delegated IPAM (host-local, static, dhcp) names no subnet to us and gets no gateway or host
route from us: nothing to check.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from overlay.cni.netconf import NetConf
from overlay.errors import CniError, Code
from overlay.gateway.spec import PORT_PREFIX
from overlay.netlink.hostnets import HostNetworks, HostRoute, describe, single
from overlay.netlink.rtnl import RTPROT_OVERLAY, Network

# Interfaces the agent makes: gateway ports and the host ends of containers' veths
# (overlay.netlink.veth.hostside_name).
OUR_INTERFACE_PREFIXES = (PORT_PREFIX, "ovl")
ADVICE = "choose a subnet that overlaps none of these"


def ours_interface(name: str) -> bool:
    return name.startswith(OUR_INTERFACE_PREFIXES)


def ours_route(route: HostRoute) -> bool:
    # A route out of a gateway port is ours even without the mark: agents before the mark
    # wrote them "proto static", and such a route dies with the port anyway.
    return route.protocol == RTPROT_OVERLAY or ours_interface(route.ifname)


def _meet(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def _membership(subnet: Network) -> Callable[[str], bool]:
    """A test of whether an address (text) lies in `subnet`; False for anything else."""
    family = socket.AF_INET if subnet.version == 4 else socket.AF_INET6
    low, high = int(subnet.network_address), int(subnet.broadcast_address)

    def inside(text: str) -> bool:
        try:
            return low <= int.from_bytes(socket.inet_pton(family, text), "big") <= high
        except (OSError, TypeError, ValueError):
            return False
    return inside


def overlaps(subnet: Network, host: HostNetworks, vteps: Mapping[str, str],
             etcd: Sequence[str] = ()) -> list[str]:
    """What `subnet` would overlap on this host, one phrase each ("the underlay network
    172.31.0.0/24 of interface br-phy"); empty if nothing. Pure. `vteps`: host -> VTEP."""
    found: list[str] = []
    for a in host.addresses:
        if not ours_interface(a.ifname) and _meet(a.address.network, subnet):
            found.append(f"the underlay network {a.address.network} of interface {a.ifname} "
                         f"(address {a.address.ip})")
    inside = _membership(subnet)  # a cluster has thousands of VTEPs: no ipaddress objects
    found += [f"the VTEP {vtep} of host {name}"
              for name, vtep in sorted(vteps.items()) if inside(vtep)]
    for endpoint in etcd:
        net = single(urlsplit(endpoint).hostname or "")
        if net is not None and _meet(net, subnet):
            found.append(f"the etcd endpoint {endpoint}")
    for r in host.routes:
        if ours_route(r):
            continue
        if r.dst.prefixlen and _meet(r.dst, subnet):
            found.append(f"the host route {describe(r)}")
        elif any(gw in subnet for gw in r.gateways):
            found.append(f"the next hop of the host route {describe(r)}")
    return list(dict.fromkeys(found))  # one line per thing, in the order found


class SubnetGuard:
    """The check ADD runs first. Its inputs are read when it runs: the host's addresses and
    routes (`read_host`), the cluster's VTEPs (`vteps`, host -> VTEP, as the agent follows
    them), etcd's endpoints (from the configuration)."""

    def __init__(self, *, read_host: Callable[[], HostNetworks],
                 vteps: Callable[[], Mapping[str, str]], etcd_endpoints: Iterable[str] = ()) -> None:
        self._read_host = read_host
        self._vteps = vteps
        self._etcd = tuple(etcd_endpoints)

    def check(self, conf: NetConf) -> None:
        """Raise CniError(7) naming every overlap of the netconf's subnets; else nothing."""
        subnets = list(dict.fromkeys(r.subnet for r in conf.ipam.ranges))
        if not subnets:
            return
        host, vteps = self._read_host(), self._vteps()
        problems = [f"subnet {subnet} overlaps {what}" for subnet in subnets
                    for what in overlaps(subnet, host, vteps, self._etcd)]
        if problems:
            raise CniError(Code.INVALID_NETCONF,
                           f"network {conf.name}: " + "; ".join(problems) + f"; {ADVICE}",
                           "the host would lose the addresses or routes it needs to reach "
                           "etcd and the other hosts")
