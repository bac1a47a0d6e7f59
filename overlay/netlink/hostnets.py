"""What the host's own networking is made of: its addresses and its main-table routes.

Read in the calling thread's namespace (the agent's: the host's) with two rtnetlink dumps
(overlay.netlink.rtnl), and named by interface, so that a refusal can say "of interface br-phy"
and the check (overlay/cni/subnets.py) can tell the agent's own interfaces and routes from the
host's. Nothing here decides anything.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from overlay.errors import CniError, Code
from overlay.netlink.rtnl import RT_TABLE_MAIN, Address, Interface, Network, Rtnl

# Routes of other tables are consulted only through rules the operator wrote; the agent adds
# its routes to the main table and to tables of its own, so only the main table can clash.
TABLES = (RT_TABLE_MAIN,)


@dataclass(frozen=True)
class HostAddress:
    ifname: str
    address: Interface  # with its prefix: 172.31.0.1/24 stands for 172.31.0.0/24 as well


@dataclass(frozen=True)
class HostRoute:
    dst: Network
    gateways: tuple[Address, ...]
    ifname: str       # "" when the route names no interface (blackhole, multipath)
    protocol: int     # RTPROT_*: who made it (2 kernel, 3 boot, 4 static, 79 this agent, ...)


@dataclass(frozen=True)
class HostNetworks:
    addresses: tuple[HostAddress, ...] = ()
    routes: tuple[HostRoute, ...] = ()


def read_host_networks() -> HostNetworks:
    """Every address of every interface, and every route of the main table, IPv4 and IPv6."""
    names = {index: name for index, name in socket.if_nameindex()}
    try:
        with Rtnl() as rtnl:
            addresses = tuple(HostAddress(names.get(a.index, str(a.index)), a.address)
                              for a in rtnl.addresses())
            routes = tuple(HostRoute(r.dst, r.gateways, names.get(r.oif, "") if r.oif else "",
                                     r.protocol)
                           for family in (socket.AF_INET, socket.AF_INET6)
                           for r in rtnl.routes(family, TABLES))
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, "cannot read the host's addresses and routes",
                       str(exc)) from None
    return HostNetworks(addresses, routes)


def describe(route: HostRoute) -> str:
    """As `ip route` would show it, shortly: '10.9.0.0/16 via 172.31.0.254 dev br-phy'."""
    text = str(route.dst) if route.dst.prefixlen else "default"
    text += "".join(f" via {gw}" for gw in route.gateways)
    if route.ifname:
        text += f" dev {route.ifname}"
    return text + f" proto {route.protocol}"


def single(address: str) -> Network | None:
    """An address (a VTEP, an etcd endpoint) as a one-address network, or None if not one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return ipaddress.ip_network(ip)
