"""A packet's walk through rule values, in Python: what the switch would do with it.

For the tests (the property test holds compiled policy to the reference evaluator,
overlay/policy/evaluate.py) and for reading a table without a switch. It knows the match fields
and actions flows.py and policy_flows.py write, the OpenFlow lookup (highest priority first)
and conjunctive matches as OVS does them: at one priority, a packet that matches one rule of
every clause of conjunction `id` is looked up again with conj_id=id; one that completes none
goes on to lower priorities. Conntrack is modelled for the first packet of a connection only
(after ct(table=...) the packet is +trk+new), which is what policy decides on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from overlay.ovs.flow import (
    CT_FLAGS,
    Actions,
    Conjunction,
    Controller,
    Ct,
    GotoTable,
    Identity,
    Load,
    Output,
    Resubmit,
    SetField,
    Value,
)

Packet = dict[str, Value]  # field name (as in flow.FIELDS) -> value; absent: not in the packet


@dataclass
class Walk:
    outputs: list[int] = field(default_factory=list)
    tables: list[int] = field(default_factory=list)   # every lookup, in order
    rules: list[Identity] = field(default_factory=list)  # the rule that decided each lookup
    committed: bool = False
    to_controller: bool = False  # sent to the agent (a reject rule)
    set_fields: dict[str, Value] = field(default_factory=dict)


def _mac_bits(text: str) -> int:
    return int(text.replace(":", ""), 16)


def field_matches(name: str, wanted: Value, packet: Packet) -> bool:
    have = packet.get(name)
    if have is None:
        return False
    if name == "ct_state":
        state = int(have)
        for part in str(wanted).replace("-", " -").replace("+", " +").split():
            bit = CT_FLAGS[part[1:]]
            if bool(state & bit) != (part[0] == "+"):
                return False
        return True
    if isinstance(wanted, str) and "/" in wanted:
        value, mask = wanted.split("/")
        if name.startswith("ipv4") or name.startswith("ipv6"):
            return ipaddress.ip_address(str(have)) in ipaddress.ip_network(wanted, strict=False)
        if name.startswith("eth"):
            m = _mac_bits(mask)
            return _mac_bits(str(have)) & m == _mac_bits(value) & m
        return int(have) & int(mask, 0) == int(value, 0) & int(mask, 0)
    return have == wanted


def _matches(identity: Identity, packet: Packet) -> bool:
    m = identity[2:]
    return all(field_matches(str(m[i]), m[i + 1], packet) for i in range(0, len(m), 2))


def lookup(rules: Mapping[Identity, Actions], table: int, packet: Packet
           ) -> tuple[Identity, Actions] | None:
    """The rule that decides `packet` in `table` (None: no rule matches: dropped)."""
    candidates = sorted(((i, a) for i, a in rules.items() if i[0] == table),
                        key=lambda pair: -pair[0].priority)
    by_priority: dict[int, list[tuple[Identity, Actions]]] = {}
    for identity, actions in candidates:
        if "conj_id" in identity[2:]:
            continue  # looked up only once a conjunction completes
        if _matches(identity, packet):
            by_priority.setdefault(identity.priority, []).append((identity, actions))
    for priority in sorted(by_priority, reverse=True):
        found = by_priority[priority]
        plain = [pair for pair in found if not any(isinstance(a, Conjunction) for a in pair[1])]
        if plain:
            return plain[0]
        clauses: dict[int, tuple[int, set[int]]] = {}
        for _, actions in found:
            for a in actions:
                if isinstance(a, Conjunction):
                    clauses.setdefault(a.id, (a.clauses, set()))[1].add(a.clause)
        for conj_id, (n, seen) in sorted(clauses.items()):
            if len(seen) == n:
                for identity, actions in candidates:
                    if identity[2:] == ("conj_id", conj_id):
                        return identity, actions
    return None


def walk(rules: Mapping[Identity, Actions], packet: Packet, table: int = 0,
         limit: int = 32) -> Walk:
    """Follow `packet` from `table` until it is output or dropped."""
    result = Walk()
    _follow(rules, dict(packet), table, result, [limit])
    return result


def _follow(rules: Mapping[Identity, Actions], packet: Packet, table: int, result: Walk,
            budget: list[int]) -> None:
    """The lookups from `table` on; a resubmit is a call (the packet, registers and all, is
    the caller's: OVS shares them too), and every lookup spends one of `budget`."""
    while budget[0] > 0:
        budget[0] -= 1
        result.tables.append(table)
        decided = lookup(rules, table, packet)
        if decided is None:
            return
        result.rules.append(decided[0])
        next_table = None
        for action in decided[1]:
            if isinstance(action, Load):
                packet[action.field] = action.value
            elif isinstance(action, SetField):
                result.set_fields[action.field] = action.value
            elif isinstance(action, Output):
                result.outputs.append(action.port)
            elif isinstance(action, GotoTable):
                next_table = action.table
            elif isinstance(action, Resubmit):
                _follow(rules, packet, action.table, result, budget)
            elif isinstance(action, Controller):
                result.to_controller = True
            elif isinstance(action, Ct):
                result.committed |= action.commit
                if action.table is not None:
                    packet["ct_state"] = CT_FLAGS["trk"] | CT_FLAGS["new"]
                    packet["ct_zone"] = action.zone
                    next_table = action.table
        if next_table is None:
            return
        table = next_table
    raise RuntimeError("too many lookups: a loop in the rules?")
