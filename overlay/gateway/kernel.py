"""The Linux side of a gateway port: address, routes, the return-path rule, sysctls.

The address goes on with `noprefixroute`, and the routes are added by hand, because the
kernel's automatic route would put every network's subnet in the main table, where two
networks with the same subnet cannot both be: the second would silently lose.

- table `spec.table`: the subnet via the port. Replies to a network's egress connections
  carry its mark (nat.py) and a rule `fwmark mark/mask lookup table` sends them back to the
  port they came from, whichever networks share the subnet.
- main table: the subnet via the port only if no other gateway port on the host has an
  overlapping subnet there. It is what the host itself and published ports (portmap's DNAT)
  use, and it can name one network per subnet: the first network on the host keeps it, and
  `main_route_conflict` tells the caller who holds it (a warning, a doctor line; never a
  silent misroute). When that network leaves, the next `ensure` of the other takes over.

Ownership: every route added here carries the protocol RTPROT_OVERLAY (79, "proto 79" in `ip
route`). A route with the gateway's destination that exists already is replaced only if it is
ours (that mark, or out of this gateway port: agents before the mark wrote "proto static");
one that is not ours, the host's connected underlay route say, is left alone and the ADD fails
with code 7 (overlay/cni/subnets.py refuses such subnets before this point; this is the last
line). Deletes carry the mark too, so the kernel removes only a route of ours. The gateway
address is not added if another interface of the host has it already: removing ours later
would take the host's own address's local route with it.

Sysctls: IPv4 forwarding on (a host with a gateway routes), rp_filter loose on the port (the
strict check would look the source up in the main table, where an overlapping network's
subnet points at another port), IPv6 off on the port (the gateway is IPv4 only and must not
send router solicitations into the overlay). TX checksum offload off: the port is read by the
userspace datapath, which does not complete checksums (docs/architecture.md, datapaths).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from overlay.errors import CniError, Code
from overlay.gateway.isolation import ISOLATION_BASE, isolation_table
from overlay.gateway.spec import MARK_MASK, PORT_PREFIX, TABLE_BASE, GatewaySpec
from overlay.netlink.offload import disable_tx_checksum
from overlay.netlink.rtnl import RTPROT_OVERLAY, RouteEntry, Rtnl, delete_if_there
from overlay.netlink.veth import if_index, netlink_session

IFA_F_NOPREFIXROUTE = 0x200
RULE_PRIORITY = 100
MAIN = 254
RT_SCOPE_LINK = 253
EEXIST, ENOENT, ESRCH = 17, 2, 3


def _write(path: str, value: str) -> None:
    if os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _index(ipr: Any, name: str) -> int | None:
    return if_index(name)


def _gateway_ports() -> dict[int, str]:
    """index -> name of the gateway ports (if_nameindex(3): no netlink dump decoded in Python,
    which cost a first ADD several ms per call under load)."""
    return {index: name for index, name in socket.if_nameindex()
            if name.startswith(PORT_PREFIX)}


def _ipv4_routes() -> list[RouteEntry]:
    """Every IPv4 route of every table, in one dump on the raw rtnetlink socket: pyroute2
    decoded a dump in 1.5-2 ms of Python on this machine, and a new gateway read four
    (rtnl.py has why)."""
    with Rtnl() as rtnl:
        return rtnl.routes(socket.AF_INET)


def _subnet_routes(routes: list[RouteEntry], table: int) -> dict[ipaddress.IPv4Network, int]:
    """dst -> oif of the routes of `table` that go out of a gateway port."""
    ports = _gateway_ports()
    return {r.dst: r.oif for r in routes if isinstance(r.dst, ipaddress.IPv4Network)
            and r.table == table and r.oif in ports and r.dst.prefixlen}


def main_route_conflict(spec: GatewaySpec) -> str | None:
    """The gateway port that holds an overlapping subnet in the main table, if not ours."""
    return _main_route_holder(_ipv4_routes(), spec)


def _main_route_holder(routes: list[RouteEntry], spec: GatewaySpec) -> str | None:
    mine = if_index(spec.port)
    for dst, oif in _subnet_routes(routes, MAIN).items():
        if oif != mine and dst.overlaps(spec.subnet):
            return _gateway_ports().get(oif, str(oif))
    return None


def ensure(spec: GatewaySpec) -> str | None:
    """Configure the port (which OVS has created) and its routes. Idempotent. Returns the
    gateway port holding an overlapping subnet in the main table (see main_route_conflict),
    if another does."""
    prepare(spec)
    return configure(spec)


def prepare(spec: GatewaySpec) -> None:
    """What needs no port: IPv4 forwarding, and the rule that sends the network's marked
    replies to its table. A new gateway's install runs this while OVS creates the port."""
    _write("/proc/sys/net/ipv4/ip_forward", "1")
    try:
        with Rtnl() as rtnl:
            if not any(r.fwmark == spec.mark and r.table == spec.table for r in rtnl.rules()):
                rtnl.add_rule(priority=RULE_PRIORITY, table=spec.table, fwmark=spec.mark,
                              fwmask=MARK_MASK)
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, f"cannot add the rule of gateway {spec.port}",
                       str(exc)) from None


def configure(spec: GatewaySpec) -> str | None:
    """The port itself, once OVS has created it: sysctls, checksum offload, up, address,
    routes; on the raw rtnetlink socket (overlay/netlink/rtnl.py: a network's first ADD waits
    for this). Returns what ensure() returns."""
    _write(f"/proc/sys/net/ipv4/conf/{spec.port}/rp_filter", "2")
    _write(f"/proc/sys/net/ipv6/conf/{spec.port}/disable_ipv6", "1")
    try:
        disable_tx_checksum(spec.port)
        idx = if_index(spec.port)
        if idx is None:
            raise CniError(Code.NETLINK_FAILURE, f"gateway port {spec.port} is missing")
        with Rtnl() as rtnl:
            rtnl.set_up(idx)
            _ensure_address(rtnl, spec, idx)
            # What follows reads and adds only to spec.table, then to main.
            routes = rtnl.routes(socket.AF_INET, (spec.table, MAIN))
            _ensure_route(rtnl, spec, idx, spec.table, routes)
            holder = _main_route_holder(routes, spec)
            if holder is None:
                _ensure_route(rtnl, spec, idx, MAIN, routes)
            return holder
    except (NetlinkError, OSError) as exc:
        raise CniError(Code.NETLINK_FAILURE, f"cannot configure gateway port {spec.port}",
                       str(exc)) from None


def _ensure_address(rtnl: Rtnl, spec: GatewaySpec, idx: int) -> None:
    want = (str(spec.address.ip), spec.address.network.prefixlen)
    have: set[tuple[str, int]] = set()
    addresses = [a for a in rtnl.addresses() if a.address.version == 4]
    for a in addresses:
        found = (str(a.address.ip), a.address.network.prefixlen)
        if a.index == idx:
            have.add(found)
        elif found[0] == want[0] and not _name(a.index).startswith(PORT_PREFIX):
            # (Another gateway port may hold it: networks can share a subnet and gateway.)
            raise CniError(Code.INVALID_NETCONF,
                           f"gateway address {want[0]} of network {spec.network} is an address "
                           f"of interface {_name(a.index)} on this host; the agent leaves it "
                           "alone; choose a subnet or gateway the host does not use")
    for addr, plen in have - {want}:  # a gateway address from an older netconf
        rtnl.delete_address(idx, ipaddress.IPv4Interface(f"{addr}/{plen}"))
    if want not in have:
        rtnl.add_address(idx, spec.address, IFA_F_NOPREFIXROUTE)


def _name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def _same_routes(routes: list[RouteEntry], subnet: ipaddress.IPv4Network,
                 table: int) -> list[RouteEntry]:
    """The routes of `table` that a replace of `subnet` (metric 0, tos 0) would hit."""
    return [r for r in routes
            if r.table == table and r.dst == subnet and r.tos == 0 and not r.priority]


def _ensure_route(rtnl: Rtnl, spec: GatewaySpec, idx: int, table: int,
                  routes: list[RouteEntry]) -> None:
    """`spec.subnet dev <port>` in `table`, marked ours. Replaces only a route of ours."""
    existing = _same_routes(routes, spec.subnet, table)
    foreign = [r for r in existing if r.protocol != RTPROT_OVERLAY and r.oif != idx]
    if foreign:
        raise _not_ours(spec, table, foreign[0])
    try:
        rtnl.add_route(spec.subnet, idx, table=table, scope=RT_SCOPE_LINK,
                       protocol=RTPROT_OVERLAY, replace=bool(existing))
    except OSError as exc:
        if exc.errno != EEXIST:
            raise
        # Someone added one between our look and our add: theirs, and it stays.
        raise _not_ours(spec, table, None) from None


def _not_ours(spec: GatewaySpec, table: int, route: RouteEntry | None) -> CniError:
    via = ""
    if route is not None:
        via = "".join(f" via {gw}" for gw in route.gateways[:1]) + \
            (f" dev {_name(route.oif)}" if route.oif else "") + f" proto {route.protocol}"
    where = "main table" if table == MAIN else f"table {table}"
    return CniError(Code.INVALID_NETCONF,
                    f"the host has a route {spec.subnet}{via} in its {where} that the overlay "
                    f"agent did not create; it is left alone, so network {spec.network} cannot "
                    "have a gateway here; choose a subnet that does not overlap it")


def _has_rule(ipr: Any, spec: GatewaySpec) -> bool:
    return any(r.get_attr("FRA_FWMARK") == spec.mark and r.get_attr("FRA_TABLE") == spec.table
               for r in ipr.get_rules(family=2))


def remove(spec: GatewaySpec) -> None:
    """Remove the rule and the routes (the port itself goes with its OVS port). Idempotent.
    On the raw rtnetlink socket, as the install: a network's last DEL waits for this."""
    try:
        with Rtnl() as rtnl:
            for rule in rtnl.rules():
                if rule.fwmark == spec.mark and rule.table == spec.table:
                    delete_if_there(rtnl.delete_rule, rule)
            idx = if_index(spec.port)
            if idx is not None:
                for table in (spec.table, MAIN):
                    # The protocol makes the kernel delete only a route of ours. The scope
                    # must be the route's: without it the kernel found none (ESRCH, taken for
                    # "gone"), and the routes went only with the port.
                    delete_if_there(rtnl.delete_route, spec.subnet, idx, table=table,
                             protocol=RTPROT_OVERLAY, scope=RT_SCOPE_LINK)
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, f"cannot remove the rule or routes of {spec.port}",
                       str(exc)) from None


def problems(spec: GatewaySpec) -> list[str]:
    """What CHECK and doctor report about the kernel side of this gateway."""
    out = []
    with netlink_session() as ipr:
        idx = _index(ipr, spec.port)
        if idx is None:
            return [f"gateway port {spec.port} is missing"]
        link = ipr.get_links(idx)[0]
        if link.get_attr("IFLA_ADDRESS") != spec.mac:
            out.append(f"{spec.port} has MAC {link.get_attr('IFLA_ADDRESS')}, not {spec.mac}")
        addrs = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
        if (str(spec.address.ip), spec.address.network.prefixlen) not in addrs:
            out.append(f"{spec.port} lacks the gateway address {spec.address}")
        if spec.subnet not in _subnet_routes(_ipv4_routes(), spec.table):
            out.append(f"route table {spec.table} lacks {spec.subnet} via {spec.port}")
        if not _has_rule(ipr, spec):
            out.append(f"no rule 'fwmark {spec.mark:#x}/{MARK_MASK:#x} lookup {spec.table}'")
    if _read("/proc/sys/net/ipv4/ip_forward") != "1":
        out.append("IPv4 forwarding is off")
    return out


def leftovers(active: list[GatewaySpec]) -> list[str]:
    """Gateway interfaces and rules with no gateway behind them (doctor, and the DEL test)."""
    ports, tables = {g.port for g in active}, {g.table for g in active}
    tables |= {isolation_table(g) for g in active}
    out = []
    with netlink_session() as ipr:
        for link in ipr.get_links():
            name = str(link.get_attr("IFLA_IFNAME") or "")
            if name.startswith(PORT_PREFIX) and name not in ports:
                out.append(f"interface {name} has no gateway behind it")
        for r in ipr.get_rules(family=2):
            table = r.get_attr("FRA_TABLE") or 0
            ours = any(base < table <= base + 0xFFFF for base in (TABLE_BASE, ISOLATION_BASE))
            if ours and table not in tables:
                out.append(f"rule 'lookup {table}' has no gateway behind it")
    return out
