"""A fake of Ofctl for unit tests: a switch table in memory that applies what we send.

It is strict where OVS would be silent, so that model bugs show: a modify_strict or
delete_strict of a rule the switch does not hold raises instead of doing nothing.
"""

from __future__ import annotations


def _split(rule: str) -> tuple[str, str]:
    head, actions = rule.split(",actions=", 1)
    if head.startswith("cookie="):
        head = head.split(",", 1)[1]
    return head, actions


class FakeOfctl:
    def __init__(self) -> None:
        self.table: dict[str, str] = {}  # identity -> actions
        self.bundles: list[list[str]] = []
        self.replacements = 0

    def replace_flows(self, bridge: str, flows: list[str]) -> None:
        self.replacements += 1
        self.table = dict(_split(f) for f in flows)

    def apply_bundle(self, bridge: str, operations: list[str]) -> None:
        self.bundles.append(operations)
        table = dict(self.table)  # all or nothing, like a bundle
        for op in operations:
            kind, rest = op.split(" ", 1)
            if kind == "add":
                identity, actions = _split(rest)
                table[identity] = actions
            elif kind == "modify_strict":
                identity, actions = _split(rest)
                if identity not in table:
                    raise AssertionError(f"modify of a rule the switch lacks: {identity}")
                table[identity] = actions
            elif kind == "delete_strict":
                if rest not in table:
                    raise AssertionError(f"delete of a rule the switch lacks: {rest}")
                del table[rest]
            else:
                raise AssertionError(f"unknown operation {op!r}")
        self.table = table

    def flow_count(self, bridge: str) -> int:
        return len(self.table)

    def dump_flows(self, bridge: str, match: str = "") -> list[str]:
        return [f"{identity} actions={actions}" for identity, actions in self.table.items()]
