"""What the host's own networking is made of: its addresses and its main-table routes.

Read in the calling thread's namespace (the agent's: the host's) with two rtnetlink dumps
(overlay.netlink.rtnl), and named by interface, so that a refusal can say "of interface br-phy"
and the check (overlay/cni/subnets.py) can tell the agent's own interfaces and routes from the
host's. Nothing here decides anything.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass

from overlay.errors import CniError, Code
from overlay.netlink.rtnl import (
    HEADER,
    RT_TABLE_MAIN,
    RTA_TABLE,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    Address,
    AddressEntry,
    Interface,
    Network,
    RouteEntry,
    Rtnl,
    attributes,
)

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
    return _named(*_dump())


def _dump() -> tuple[list[AddressEntry], list[RouteEntry]]:
    try:
        with Rtnl() as rtnl:
            return rtnl.addresses(), [r for family in (socket.AF_INET, socket.AF_INET6)
                                      for r in rtnl.routes(family, TABLES)]
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, "cannot read the host's addresses and routes",
                       str(exc)) from None


def _named(addresses: list[AddressEntry], routes: list[RouteEntry]) -> HostNetworks:
    """The dump with each interface named as it is named now (if_nameindex: no netlink)."""
    names = {index: name for index, name in socket.if_nameindex()}
    return HostNetworks(
        tuple(HostAddress(names.get(a.index, str(a.index)), a.address) for a in addresses),
        tuple(HostRoute(r.dst, r.gateways, names.get(r.oif, "") if r.oif else "", r.protocol)
              for r in routes))


# rtnetlink's multicast groups (linux/rtnetlink.h, RTMGRP_*): address and route changes
GROUPS = 0x10 | 0x40 | 0x100 | 0x400  # IPV4_IFADDR, IPV4_ROUTE, IPV6_IFADDR, IPV6_ROUTE
_RTMSG_TABLE = 4  # rtmsg: family, dst_len, src_len, tos, table, ...


class HostNetworksCache:
    """read_host_networks(), the tables read again only after the kernel announced a change.

    Every ADD checks its subnets against the host (overlay/cni/subnets.py), and decoding the
    host's addresses and routes was a quarter of an ADD's Python time, the same tables read
    again and again. A netlink socket subscribed to address and route changes hears of every
    one: the kernel queues the notice before it acknowledges the change to whoever made it, so
    a change made before a check is always seen by it. Notices of routes outside the tables
    read (TABLES) are ignored; anything else (an address, a main-table route, lost notices)
    makes the next check read the tables again. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._current: tuple[list[AddressEntry], list[RouteEntry]] | None = None
        self.reads = 0  # how many times the tables were read (for tests and curiosity)

    def __call__(self) -> HostNetworks:
        with self._lock:
            if self._changed() or self._current is None:
                self._current = _dump()
                self.reads += 1
            current = self._current
        # Named at every call: a renamed interface (no address or route notice) shows its
        # name of now.
        return _named(*current)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _changed(self) -> bool:
        """Drain the notices queued since the last call: did any matter? A new socket (the
        first call, or after an error) knows nothing yet: True."""
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK,
                                 socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                 socket.NETLINK_ROUTE)
            sock.bind((0, GROUPS))  # before the read that follows: no change falls between
            self._sock = sock
            return True
        changed = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS (notices were lost) or worse: a new socket, a new read
                self._sock.close()
                self._sock = None
                return True
            changed = changed or _matters(data)


def _matters(data: bytes) -> bool:
    """Does a batch of notices touch what read_host_networks reads?"""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind = HEADER.unpack_from(data, offset)[:2]
        if length < HEADER.size:
            return True
        payload = data[offset + HEADER.size:offset + length]
        offset += (length + 3) & ~3
        if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
            return True  # an address came or went
        table = payload[_RTMSG_TABLE] if len(payload) > _RTMSG_TABLE else RT_TABLE_MAIN
        raw = attributes(payload[12:]).get(RTA_TABLE)
        table = struct.unpack("=I", raw)[0] if raw and len(raw) == 4 else table
        if table in TABLES:
            return True
    return False


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
