"""Just enough rtnetlink for attaching a container, spoken directly on an AF_NETLINK socket.

Why not pyroute2 here: an ADD makes about ten requests (create the veth pair, bring the host
end up, read its MAC, then in the container's netns: up, address, routes, MAC), each of which
the kernel answers in tens of microseconds. pyroute2 0.9 runs every request through an asyncio
event loop and its generic message classes: about 17 ms of Python per ADD on this machine,
against ~1 ms in the kernel, where the reference plugins spend a few ms in all. A gateway
(a network's first ADD on the host, and its last DEL) is made and removed here too: link,
address, routes, policy-routing rules, isolation blackholes (overlay/gateway/kernel.py,
isolation.py). CHECK and doctor's reads of a gateway keep pyroute2.

A request carries NLM_F_ACK, so the kernel always answers with an NLMSG_ERROR (0 = success) or
the object asked for followed by it. An Rtnl socket belongs to the network namespace of the
thread that opened it (overlay.netlink.netns), and to one thread at a time.

The dumps (addresses, routes) serve the check of a new network's subnets against the host
(overlay/cni/subnets.py), which runs on every ADD: one dump of each here is well under a
millisecond, where pyroute2 decoded the same tables in several.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/veth.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLM_F_REPLACE = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE = 16, 17, 18, 20, 21, 24
RTM_GETADDR, RTM_DELROUTE, RTM_GETROUTE = 22, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, RTN_BLACKHOLE = 254, 4, 0, 1, 6
RT_TABLE_COMPAT = 252  # rtmsg's 8-bit table field for a table number only RTA_TABLE can hold
# linux/fib_rules.h: a rule's attributes, and its action "lookup TABLE"
FRA_DST, FRA_IIFNAME, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 1, 3, 6, 10, 15, 16
FR_ACT_TO_TBL = 1

HEADER = struct.Struct("=LHHLL")     # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")    # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")     # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table,
                                      # protocol, scope, type, flags
_RTNH = struct.Struct("=HBBi")       # rtnexthop: length, flags, hops, ifindex
_sequence = itertools.count(1)

# The routing protocol number that marks the routes this agent creates on a host (`ip route`
# shows "proto 79"). Linux keeps it with the route and matches it on delete, so the agent can
# tell its routes from the operator's, DHCP's or a routing daemon's, and replaces or deletes
# only its own. 79 is unassigned in iproute2's rt_protos (Calico uses 80; 186-198 are FRR's).
RTPROT_OVERLAY = 79


@dataclass(frozen=True)
class AddressEntry:
    """One address of an interface, as a dump shows it."""

    index: int
    address: Interface


@dataclass(frozen=True)
class RouteEntry:
    """One route, as a dump shows it: enough to tell whose it is and what it covers."""

    dst: Network
    gateways: tuple[Address, ...]  # the next hop, or each next hop of a multipath route
    oif: int                       # 0 if none (a multipath route names one per next hop)
    table: int
    protocol: int
    kind: int                      # RTN_UNICAST, RTN_BLACKHOLE, ...
    priority: int                  # the metric
    tos: int = 0                   # part of a route's identity, as dst and metric are


@dataclass(frozen=True)
class RuleEntry:
    """One policy-routing rule "lookup TABLE", as a dump shows it (`ip rule`)."""

    priority: int
    table: int
    fwmark: int | None
    fwmask: int | None
    iifname: str | None
    dst: Network | None


class RtnlError(OSError):
    """The kernel refused a request; `errno` says why."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def attributes(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]  # without NLA_F_NESTED/BYTEORDER
        offset += (length + 3) & ~3
    return out


class Rtnl:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; the payloads of the answers before the acknowledgement (or, for
        a dump, before NLMSG_DONE)."""
        seq = next(_sequence)
        ack = 0 if flags & NLM_F_DUMP == NLM_F_DUMP else NLM_F_ACK
        self._sock.send(HEADER.pack(HEADER.size + len(body), kind,
                                     NLM_F_REQUEST | ack | flags, seq, 0) + body)
        answers: list[bytes] = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, mtype, _, mseq, _ = HEADER.unpack_from(data, offset)
                payload = data[offset + HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # an answer to a request an earlier failure abandoned
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return answers
                if mtype == NLMSG_DONE:
                    return answers
                answers.append(payload)

    # --- links -------------------------------------------------------------------------------

    def add_veth(self, name: str, *, mtu: int, peer: str, peer_netns_fd: int,
                 peer_mac: str | None = None, up: bool = True) -> None:
        """Create the pair `name` (here, up unless `up` is False) and `peer` (in the namespace
        of `peer_netns_fd`, down, with `peer_mac` if given), both with `mtu`. EEXIST if either
        name is taken."""
        peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_MTU, _u32(mtu)) + \
            _attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))
        if peer_mac is not None:
            peer_attrs += _attr(IFLA_ADDRESS, _mac(peer_mac))
        info = _attr(IFLA_INFO_KIND, b"veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs))
        flags = IFF_UP if up else 0
        body = _IFINFO.pack(0, 0, 0, flags, IFF_UP) + _attr(IFLA_IFNAME, _name(name)) + \
            _attr(IFLA_MTU, _u32(mtu)) + _attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def mac(self, index: int) -> str:
        answers = self._request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))
        attrs = attributes(answers[0][_IFINFO.size:]) if answers else {}
        if IFLA_ADDRESS not in attrs:
            raise RtnlError(19, f"link {index} has no MAC address")  # ENODEV
        return ":".join(f"{b:02x}" for b in attrs[IFLA_ADDRESS])

    def delete_link(self, index: int) -> None:
        self._request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    # --- addresses and routes ----------------------------------------------------------------

    def add_address(self, index: int, address: Interface, flags: int = 0) -> None:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed = address.ip.packed
        # ifaddrmsg's flags field is 8 bits; the newer flags (IFA_F_NOPREFIXROUTE, 0x200) go
        # in IFA_FLAGS, which the kernel reads instead when it is there.
        body = _IFADDR.pack(family, address.network.prefixlen, flags & 0xFF, 0, index) + \
            _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if flags > 0xFF:
            body += _attr(IFA_FLAGS, _u32(flags))
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def delete_address(self, index: int, address: Interface) -> None:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed = address.ip.packed
        body = _IFADDR.pack(family, address.network.prefixlen, 0, 0, index) + \
            _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(RTM_DELADDR, 0, body)

    def add_route(self, dst: Network, oif: int, gateway: Address | None = None, *,
                  table: int = RT_TABLE_MAIN, protocol: int = RTPROT_STATIC,
                  scope: int = RT_SCOPE_UNIVERSE, replace: bool = False) -> None:
        """As `ip route add|replace DST [via GW] dev OIF table TABLE proto PROTOCOL scope
        SCOPE` (default: the main table, proto static, scope global). EEXIST if not
        `replace` and the route is there."""
        body = self._route(dst, oif, table, protocol, scope)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        self._request(RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL),
                      body)

    def delete_route(self, dst: Network, oif: int, *, table: int, protocol: int,
                     scope: int) -> None:
        """As `ip route del DST dev OIF table TABLE proto PROTOCOL scope SCOPE`: the kernel
        deletes only a route with that protocol (ESRCH if there is none)."""
        self._request(RTM_DELROUTE, 0, self._route(dst, oif, table, protocol, scope))

    @staticmethod
    def _route(dst: Network, oif: int, table: int, protocol: int, scope: int) -> bytes:
        """A unicast route's rtmsg and attributes: destination, device, table."""
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, table if table < 256 else RT_TABLE_COMPAT,
                           protocol, scope, RTN_UNICAST, 0)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        return body + _attr(RTA_OIF, _u32(oif)) + _attr(RTA_TABLE, _u32(table))

    def replace_blackhole(self, dst: Network, table: int) -> None:
        """As `ip route replace blackhole DST table TABLE`."""
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, self._blackhole(dst, table))

    def delete_blackhole(self, dst: Network, table: int) -> None:
        self._request(RTM_DELROUTE, 0, self._blackhole(dst, table))

    @staticmethod
    def _blackhole(dst: Network, table: int) -> bytes:
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        return _RTMSG.pack(family, dst.prefixlen, 0, 0, table if table < 256 else RT_TABLE_COMPAT,
                           RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_BLACKHOLE, 0) + \
            _attr(RTA_DST, dst.network_address.packed) + _attr(RTA_TABLE, _u32(table))

    # --- policy-routing rules --------------------------------------------------------------

    def add_rule(self, *, priority: int, table: int, fwmark: int | None = None,
                 fwmask: int | None = None, iifname: str | None = None,
                 dst: Network | None = None) -> None:
        """As `ip rule add [fwmark M/MASK] [iif NAME] [to DST] lookup TABLE priority P`. The
        kernel takes an iif that names no device yet: the rule applies once it exists."""
        self._request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL,
                      self._rule(priority, table, fwmark, fwmask, iifname, dst))

    def delete_rule(self, rule: RuleEntry) -> None:
        """Delete the rule a dump (rules()) showed: ENOENT if it is gone."""
        self._request(RTM_DELRULE, 0, self._rule(rule.priority, rule.table, rule.fwmark,
                                                 rule.fwmask, rule.iifname, rule.dst))

    @staticmethod
    def _rule(priority: int, table: int, fwmark: int | None, fwmask: int | None,
              iifname: str | None, dst: Network | None) -> bytes:
        family = socket.AF_INET if dst is None or dst.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, dst.prefixlen if dst else 0, 0, 0,
                           table if table < 256 else RT_TABLE_COMPAT, 0, 0, FR_ACT_TO_TBL, 0)
        body += _attr(FRA_PRIORITY, _u32(priority)) + _attr(FRA_TABLE, _u32(table))
        if fwmark is not None:
            body += _attr(FRA_FWMARK, _u32(fwmark))
        if fwmask is not None:
            body += _attr(FRA_FWMASK, _u32(fwmask))
        if iifname is not None:
            body += _attr(FRA_IIFNAME, _name(iifname))
        if dst is not None:
            body += _attr(FRA_DST, dst.network_address.packed)
        return body

    # --- dumps ---------------------------------------------------------------------------

    def addresses(self) -> list[AddressEntry]:
        """Every IPv4 and IPv6 address of every interface of this namespace."""
        out = []
        for payload in self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, prefixlen, _, _, index = _IFADDR.unpack_from(payload)
            attrs = attributes(payload[_IFADDR.size:])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IFA_ADDRESS: a ptp peer
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(raw)
            out.append(AddressEntry(index, ipaddress.ip_interface(f"{ip}/{prefixlen}")))
        return out

    def routes(self, family: int, tables: tuple[int, ...] | None = None) -> list[RouteEntry]:
        """Every route of `family` (socket.AF_INET or AF_INET6) in `tables` (default: every
        table). The kernel dumps them all; those of other tables (the local table's entry for
        every address, above all) are skipped before they cost any parsing."""
        out = []
        for payload in self._request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0,
                                                                           0, 0, 0, 0)):
            fam, dst_len, _, tos, table, protocol, _, kind, _ = _RTMSG.unpack_from(payload)
            if fam != family:
                continue
            attrs = attributes(payload[_RTMSG.size:])
            table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
            if tables is not None and table not in tables:
                continue
            zero = b"\0" * (4 if family == socket.AF_INET else 16)
            dst = ipaddress.ip_network((attrs.get(RTA_DST, zero), dst_len), strict=False)
            gateways = [ipaddress.ip_address(attrs[RTA_GATEWAY])] if RTA_GATEWAY in attrs else []
            gateways += _multipath_gateways(attrs.get(RTA_MULTIPATH, b""))
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            metric = struct.unpack("=I", attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
            out.append(RouteEntry(dst, tuple(gateways), oif, table, protocol, kind, metric, tos))
        return out


    def rules(self, family: int = socket.AF_INET) -> list[RuleEntry]:
        """Every policy-routing rule of `family` that looks a table up."""
        out = []
        for payload in self._request(RTM_GETRULE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0,
                                                                          0, 0, 0, 0)):
            fam, dst_len, _, _, table, _, _, action, _ = _RTMSG.unpack_from(payload)
            if fam != family or action != FR_ACT_TO_TBL:
                continue
            attrs = attributes(payload[_RTMSG.size:])

            def u32(kind: int, attrs: dict[int, bytes] = attrs) -> int | None:
                return struct.unpack("=I", attrs[kind])[0] if kind in attrs else None
            iif = attrs[FRA_IIFNAME].rstrip(b"\0").decode() if FRA_IIFNAME in attrs else None
            dst = (ipaddress.ip_network((attrs[FRA_DST], dst_len), strict=False)
                   if FRA_DST in attrs else None)
            out.append(RuleEntry(u32(FRA_PRIORITY) or 0, u32(FRA_TABLE) or table,
                                 u32(FRA_FWMARK), u32(FRA_FWMASK), iif, dst))
        return out


def delete_if_there(delete: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a delete; one whose object is gone already (ENOENT, ESRCH) is done too."""
    try:
        delete(*args, **kwargs)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ESRCH):
            raise


def _multipath_gateways(data: bytes) -> list[Address]:
    out = []
    offset = 0
    while offset + _RTNH.size <= len(data):
        length = _RTNH.unpack_from(data, offset)[0]
        if length < _RTNH.size:
            break
        gateway = attributes(data[offset + _RTNH.size:offset + length]).get(RTA_GATEWAY)
        if gateway:
            out.append(ipaddress.ip_address(gateway))
        offset += (length + 3) & ~3
    return out
