"""Separation of networks in the host kernel, by routing: no iptables rule order involved.

Two networks meet in the kernel when a container sends to its gateway a packet for another
network's subnet: the host would route it out of the other gateway port. nat.py drops that in
FORWARD, but a FORWARD rule works only while nothing above it accepts first, and other software
(Docker, firewalld, an operator's `iptables -I FORWARD 1 -j ACCEPT`) inserts rules at the top.
The routing decision comes before any FORWARD rule, so here it is made where no rule can
override it:

  priority 97  iif ovg<A> to <subnet A>  lookup <A's table>   its own subnet: back to port A
  priority 98  iif ovg<A>                 lookup <A's isolation table>
                   holding a blackhole route for every other gateway's subnet on this host;
                   an address in none of them finds no route there, and the lookup goes on to
                   the main table (egress to the underlay and beyond)

Priority 97 comes first so that an overlapping subnet of another network never hides A's
own (hairpin traffic through a published port goes back to A, not into a blackhole). The
tables are rewritten whenever a gateway comes or goes (`apply`, with every gateway of the
host), and `problems` tells doctor and the periodic repair what is missing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from overlay.errors import CniError, Code
from overlay.gateway.spec import GatewaySpec
from overlay.netlink.rtnl import RouteEntry, Rtnl, RuleEntry, delete_if_there

ISOLATION_BASE = 0x0E000000  # isolation tables ISOLATION_BASE + zone (spec.TABLE_BASE - 1 << 24)
OWN_PRIORITY, ISOLATION_PRIORITY = 97, 98
RTN_BLACKHOLE = 6
ENOENT, ESRCH = 2, 3


def isolation_table(spec: GatewaySpec) -> int:
    return ISOLATION_BASE + spec.zone


def _ipv4_routes() -> list[RouteEntry]:
    """Every IPv4 route in one dump on the raw rtnetlink socket (pyroute2 decoded each dump in
    1.5-2 ms of Python, one per gateway; see rtnl.py)."""
    with Rtnl() as rtnl:
        return rtnl.routes(socket.AF_INET)


def _blackholes(routes: list[RouteEntry], table: int) -> set[ipaddress.IPv4Network]:
    return {r.dst for r in routes if isinstance(r.dst, ipaddress.IPv4Network)
            and r.table == table and r.kind == RTN_BLACKHOLE and r.dst.prefixlen}


def _rules(rules: list[RuleEntry], spec: GatewaySpec) -> set[int]:
    """Which of `spec`'s two rules are among `rules` (OWN_PRIORITY, ISOLATION_PRIORITY)."""
    found = set()
    for r in rules:
        if r.iifname != spec.port:
            continue
        if r.priority == OWN_PRIORITY and r.table == spec.table and r.dst is not None and \
                r.dst.prefixlen == spec.subnet.prefixlen:
            found.add(OWN_PRIORITY)
        elif r.priority == ISOLATION_PRIORITY and r.table == isolation_table(spec):
            found.add(ISOLATION_PRIORITY)
    return found


def _wanted(spec: GatewaySpec, specs: Sequence[GatewaySpec]) -> set[ipaddress.IPv4Network]:
    return {s.subnet for s in specs if s.vni != spec.vni}


def apply(specs: Sequence[GatewaySpec]) -> None:
    """Make every gateway in `specs` (all of this host's) unable to reach the others.
    Idempotent. On the raw rtnetlink socket (overlay/netlink/rtnl.py): a network's first ADD
    waits for this, and pyroute2 spent several ms of Python in each call."""
    try:
        with Rtnl() as rtnl:
            # Each spec's changes touch only its own isolation table.
            routes = rtnl.routes(socket.AF_INET, tuple(isolation_table(s) for s in specs))
            rules = rtnl.rules()
            for spec in specs:
                _apply_one(rtnl, spec, _wanted(spec, specs), routes, rules)
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, "cannot separate the networks' gateways",
                       str(exc)) from None


def _apply_one(rtnl: Rtnl, spec: GatewaySpec, wanted: set[ipaddress.IPv4Network],
               routes: list[RouteEntry], rules: list[RuleEntry]) -> None:
    table = isolation_table(spec)
    have = _blackholes(routes, table)
    for net in wanted - have:
        rtnl.replace_blackhole(net, table)
    for net in have - wanted:
        rtnl.delete_blackhole(net, table)
    present = _rules(rules, spec)
    if OWN_PRIORITY not in present:
        rtnl.add_rule(iifname=spec.port, dst=spec.subnet, table=spec.table,
                      priority=OWN_PRIORITY)
    if ISOLATION_PRIORITY not in present:
        rtnl.add_rule(iifname=spec.port, table=table, priority=ISOLATION_PRIORITY)


def remove(spec: GatewaySpec) -> None:
    """Take `spec`'s rules and isolation table away (the others': `apply` without it)."""
    table = isolation_table(spec)
    try:
        with Rtnl() as rtnl:
            for net in _blackholes(rtnl.routes(socket.AF_INET, (table,)), table):
                delete_if_there(rtnl.delete_blackhole, net, table)
            for rule in rtnl.rules():
                if rule.iifname == spec.port and \
                        rule.priority in (OWN_PRIORITY, ISOLATION_PRIORITY):
                    delete_if_there(rtnl.delete_rule, rule)
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, "cannot remove a gateway's isolation",
                       str(exc)) from None


def problems(specs: Sequence[GatewaySpec]) -> list[str]:
    """What is missing for the separation of these gateways (doctor, periodic repair)."""
    out = []
    with Rtnl() as rtnl:
        routes, rules = rtnl.routes(socket.AF_INET), rtnl.rules()
    for spec in specs:
        present = _rules(rules, spec)
        if OWN_PRIORITY not in present:
            out.append(f"no rule 'iif {spec.port} to {spec.subnet} lookup {spec.table}'")
        if ISOLATION_PRIORITY not in present:
            out.append(f"no rule 'iif {spec.port} lookup {isolation_table(spec)}': "
                       f"{spec.network} is not kept from the other networks by routing")
        missing = _wanted(spec, specs) - _blackholes(routes, isolation_table(spec))
        out += [f"{spec.port} may reach {net}: no blackhole route in table "
                f"{isolation_table(spec)}" for net in sorted(missing)]
    return out
