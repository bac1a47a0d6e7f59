"""A fake switch for unit tests: a flow table in memory that applies what we send, as values.

It stands where an Ofctl does (Dataplane(ofctl=...)): `on(bridge)` gives its Switch, itself.
It is strict where OVS would be silent, so that model bugs show: a modify_strict or
delete_strict of a rule the switch does not hold raises instead of doing nothing. Its dump
honours the filter it is given, as ovs-ofctl dump-flows does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from overlay.errors import CniError, Code
from overlay.ovs.flow import ADD, DELETE, MODIFY, Actions, Flow, Identity, Match, Op


class FakeOfctl:
    def __init__(self) -> None:
        self.table: dict[Identity, Actions] = {}
        self.cookies: dict[Identity, int] = {}
        self.bundles: list[list[Op]] = []
        self.replacements = 0
        self.refuse = 0  # the next this many bundles are refused, all or nothing, as OVS does

    def on(self, bridge: str) -> FakeOfctl:
        return self

    # --- Switch ------------------------------------------------------------------------------

    def replace(self, rules: Mapping[Identity, Actions], cookie: int) -> None:
        self.replacements += 1
        self.table = dict(rules)
        self.cookies = dict.fromkeys(rules, cookie)

    def apply(self, ops: Sequence[Op], cookie: int) -> None:
        if self.refuse:
            self.refuse -= 1
            raise CniError(Code.OVS_FAILURE, "the switch refused a flow; nothing was changed")
        self.bundles.append(list(ops))
        table = dict(self.table)  # all or nothing, like a bundle
        for op in ops:
            if op.kind == ADD:
                table[op.identity] = op.actions
                self.cookies[op.identity] = cookie
            elif op.kind == MODIFY:
                if op.identity not in table:
                    raise AssertionError(f"modify of a rule the switch lacks: {op.identity}")
                table[op.identity] = op.actions
            elif op.kind == DELETE:
                if op.identity not in table:
                    raise AssertionError(f"delete of a rule the switch lacks: {op.identity}")
                del table[op.identity]
            else:
                raise AssertionError(f"unknown operation {op!r}")
        self.table = table

    def count(self) -> int:
        return len(self.table)

    def holds(self, rule: Flow) -> bool:
        return self.table.get(rule.identity) == rule.actions

    def answers(self) -> bool:
        return True

    # --- for tests ---------------------------------------------------------------------------

    def dump(self, table: int | None = None, match: Match | None = None) -> list[Flow]:
        """The rules of `table` (all: None) whose match sets every field `match` sets, to the
        same value: what `ovs-ofctl dump-flows` lists for such a filter, exact values only."""
        return [Flow(identity, actions) for identity, actions in self.table.items()
                if (table is None or identity.table == table)
                and (match is None or identity.match.holds(match))]


class FakeChannel:
    """A persistent OpenFlow channel to a FakeOfctl's table (Dataplane(channel=...)): bundles
    land in the same table, and holds_exactly compares rule for rule, as the real one does."""

    def __init__(self, switch: FakeOfctl) -> None:
        self.switch = switch
        self.compared = 0  # holds_exactly calls

    def apply(self, ops: Sequence[Op], cookie: int, delete_cookies: tuple[int, ...] = ()) -> None:
        self.switch.apply(ops, cookie)

    def add_all(self, rules: Mapping[Identity, Actions], cookie: int,
                delete_cookies: tuple[int, ...] = ()) -> None:
        self.switch.replace(rules, cookie)

    def holds_exactly(self, rules: Mapping[Identity, Actions]) -> tuple[bool, set[int]]:
        self.compared += 1
        return self.switch.table == dict(rules), set(self.switch.cookies.values())

    def count(self) -> int:
        return self.switch.count()
