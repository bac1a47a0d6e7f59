"""The seam between what we want in a switch's flow table and how it gets there.

Three implementations: the persistent OpenFlow channel (openflow.Channel: bundles in a few
ms, bytes compared with the switch's own), ovs-ofctl (ofctl.OfctlSwitch: a process per call,
but it understands every rule), and an in-memory fake for unit tests (testing.FakeOfctl).
The dataplane applies its changes through one and falls back to ovs-ofctl when the channel
cannot say a rule (Unsupported).

Probes compare values: a rule is held when the switch has a rule with the same identity and
the same actions, not when some line of a dump contains a substring ("output:1" is in
"output:12").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from overlay.ovs.flow import Actions, Flow, Identity, Op


class Switch(Protocol):
    def apply(self, ops: Sequence[Op], cookie: int) -> None:
        """One atomic bundle: every operation, or none (then CniError). modify_strict and
        delete_strict name one rule by identity; adds carry `cookie`."""

    def replace(self, rules: Mapping[Identity, Actions], cookie: int) -> None:
        """Make the switch hold exactly `rules`, atomically, under `cookie`."""

    def count(self) -> int:
        """How many rules the switch holds, all tables (a cheap drift probe)."""

    def holds(self, rule: Flow) -> bool:
        """Does the switch hold this rule: same table, priority, match and actions?"""

    def answers(self) -> bool:
        """Is the switch there and answering (a liveness probe)?"""
