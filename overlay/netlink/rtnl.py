"""Just enough rtnetlink for attaching a container, spoken directly on an AF_NETLINK socket.

Why not pyroute2 here: an ADD makes about ten requests (create the veth pair, bring the host
end up, read its MAC, then in the container's netns: up, address, routes, MAC), each of which
the kernel answers in tens of microseconds. pyroute2 0.9 runs every request through an asyncio
event loop and its generic message classes: about 17 ms of Python per ADD on this machine,
against ~1 ms in the kernel, where the reference plugins spend a few ms in all. CHECK and the
gateway's writes and rule dumps keep pyroute2; the gateway reads its routes and addresses with
the dumps below (a first ADD makes the gateway, and pyroute2 decoded each dump in 1.5-2 ms).

A request carries NLM_F_ACK, so the kernel always answers with an NLMSG_ERROR (0 = success) or
the object asked for followed by it. An Rtnl socket belongs to the network namespace of the
thread that opened it (overlay.netlink.netns), and to one thread at a time.

The dumps (addresses, routes) serve the check of a new network's subnets against the host
(overlay/cni/subnets.py), which runs on every ADD: one dump of each here is well under a
millisecond, where pyroute2 decoded the same tables in several.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/veth.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
RTM_GETADDR, RTM_GETROUTE = 22, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1

_HEADER = struct.Struct("=LHHLL")     # nlmsghdr: length, type, flags, sequence, port id
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


def _attrs(data: bytes) -> dict[int, bytes]:
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
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind,
                                     NLM_F_REQUEST | ack | flags, seq, 0) + body)
        answers: list[bytes] = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, _, mseq, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size:offset + length]
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
                 peer_mac: str | None = None) -> None:
        """Create the pair `name` (here, up) and `peer` (in the namespace of `peer_netns_fd`,
        down, with `peer_mac` if given), both with `mtu`. EEXIST if either name is taken."""
        peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_MTU, _u32(mtu)) + \
            _attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))
        if peer_mac is not None:
            peer_attrs += _attr(IFLA_ADDRESS, _mac(peer_mac))
        info = _attr(IFLA_INFO_KIND, b"veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs))
        body = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, _name(name)) + \
            _attr(IFLA_MTU, _u32(mtu)) + _attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def mac(self, index: int) -> str:
        answers = self._request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))
        attrs = _attrs(answers[0][_IFINFO.size:]) if answers else {}
        if IFLA_ADDRESS not in attrs:
            raise RtnlError(19, f"link {index} has no MAC address")  # ENODEV
        return ":".join(f"{b:02x}" for b in attrs[IFLA_ADDRESS])

    def delete_link(self, index: int) -> None:
        self._request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    # --- addresses and routes ----------------------------------------------------------------

    def add_address(self, index: int, address: Interface, flags: int = 0) -> None:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        packed = address.ip.packed
        body = _IFADDR.pack(family, address.network.prefixlen, flags, 0, index) + \
            _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_route(self, dst: Network, oif: int, gateway: Address | None = None) -> None:
        """A route in the main table, as `ip route add DST [via GW] dev OIF proto static`."""
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        body += _attr(RTA_OIF, _u32(oif))
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    # --- dumps ---------------------------------------------------------------------------

    def addresses(self) -> list[AddressEntry]:
        """Every IPv4 and IPv6 address of every interface of this namespace."""
        out = []
        for payload in self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, prefixlen, _, _, index = _IFADDR.unpack_from(payload)
            attrs = _attrs(payload[_IFADDR.size:])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IFA_ADDRESS: a ptp peer
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(raw)
            out.append(AddressEntry(index, ipaddress.ip_interface(f"{ip}/{prefixlen}")))
        return out

    def routes(self, family: int) -> list[RouteEntry]:
        """Every route of `family` (socket.AF_INET or AF_INET6) in every table."""
        out = []
        for payload in self._request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0,
                                                                           0, 0, 0, 0)):
            fam, dst_len, _, tos, table, protocol, _, kind, _ = _RTMSG.unpack_from(payload)
            if fam != family:
                continue
            attrs = _attrs(payload[_RTMSG.size:])
            zero = b"\0" * (4 if family == socket.AF_INET else 16)
            dst = ipaddress.ip_network((attrs.get(RTA_DST, zero), dst_len), strict=False)
            gateways = [ipaddress.ip_address(attrs[RTA_GATEWAY])] if RTA_GATEWAY in attrs else []
            gateways += _multipath_gateways(attrs.get(RTA_MULTIPATH, b""))
            table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            metric = struct.unpack("=I", attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
            out.append(RouteEntry(dst, tuple(gateways), oif, table, protocol, kind, metric, tos))
        return out


def _multipath_gateways(data: bytes) -> list[Address]:
    out = []
    offset = 0
    while offset + _RTNH.size <= len(data):
        length = _RTNH.unpack_from(data, offset)[0]
        if length < _RTNH.size:
            break
        gateway = _attrs(data[offset + _RTNH.size:offset + length]).get(RTA_GATEWAY)
        if gateway:
            out.append(ipaddress.ip_address(gateway))
        offset += (length + 3) & ~3
    return out
