"""OpenFlow through ovs-ofctl: atomic bundles of flow changes, and whole-table replacement.

`apply_bundle` sends a list of add / modify_strict / delete_strict operations as one OpenFlow
1.4 bundle: the event path, which never reads the switch's table.

`replace-flows --bundle` diffs the wanted table against the switch's and applies adds, modifies
and deletes in a single OpenFlow 1.4 bundle, so packets see either the old table or the new one,
never a half-written one. Flows whose match and actions did not change are left untouched,
counters included, which is what makes an agent restart hitless.

ovs-ofctl reaches the bridge through its management socket in OVS_RUNDIR, which we pass
explicitly: several OVS instances (the lab's hosts) live on one machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence

from overlay.errors import CniError, Code
from overlay.ovs.flow import Actions, Flow, Identity, Op
from overlay.ovs.flowtext import flow_text, match_text, op_text


class Ofctl:
    def __init__(self, *, rundir: str, timeout: float = 10.0) -> None:
        self._rundir = rundir
        self._timeout = timeout

    def _target(self, bridge: str) -> str:
        return f"unix:{os.path.join(self._rundir, bridge + '.mgmt')}"

    def _run(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> str:
        cmd = ["ovs-ofctl", "-O", "OpenFlow14", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=timeout or self._timeout,
                                  input=stdin, env={**os.environ, "OVS_RUNDIR": self._rundir})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CniError(Code.OVS_FAILURE, "ovs-ofctl did not run", str(exc)) from None
        if proc.returncode != 0:
            raise CniError(Code.OVS_FAILURE, f"ovs-ofctl {args[0]} failed", proc.stderr.strip())
        return proc.stdout

    def replace_flows(self, bridge: str, flows: list[str]) -> None:
        # On stdin ("-"), not in a file: an agent killed mid-call leaves nothing behind.
        # 100,000 rules (50,000 remote endpoints) took ovs-ofctl about 9 s on a loaded
        # machine: allow for 5,000 a second rather than fail at the fixed timeout.
        self._run("--bundle", "replace-flows", self._target(bridge), "-",
                  stdin="\n".join(flows) + "\n", timeout=max(self._timeout, len(flows) / 5000))

    def apply_bundle(self, bridge: str, operations: list[str]) -> None:
        """Operations in ovs-ofctl's syntax ("add ...", "modify_strict ...", "delete_strict ..."),
        all or nothing."""
        self._run("--bundle", "add-flows", self._target(bridge), "-",
                  stdin="\n".join(operations) + "\n")

    def flow_count(self, bridge: str) -> int:
        """How many rules the bridge holds, without transferring them (a cheap drift probe)."""
        out = self._run("dump-aggregate", self._target(bridge))
        match = re.search(r"flow_count=(\d+)", out)
        if match is None:
            raise CniError(Code.OVS_FAILURE, "ovs-ofctl dump-aggregate said no flow_count", out)
        return int(match.group(1))

    def dump_flows(self, bridge: str, match: str = "") -> list[str]:
        """The switch's rules as it writes them (for people), those `match` selects."""
        out = self._run("--no-stats", "dump-flows", self._target(bridge), *([match] if match else []))
        return [line.strip() for line in out.splitlines() if line.strip() and "reply" not in line]

    def dump_flow_stats(self, bridge: str, match: str) -> list[str]:
        """The rules `match` selects, with their counters (n_packets, n_bytes)."""
        out = self._run("dump-flows", self._target(bridge), match)
        return [line.strip() for line in out.splitlines() if "n_packets=" in line]

    def canonical(self, rule: str) -> str:
        """A rule as ovs-vswitchd itself writes it ("reg0=0x2a", "load:0x2a->..."), from its
        priority on: what a dump of the switch says of the same rule, so the two compare."""
        out = self._run("parse-flow", rule)
        mod = next((line for line in out.splitlines() if "FLOW_MOD" in line), "")
        if "priority=" not in mod:
            raise CniError(Code.OVS_FAILURE, "ovs-ofctl parse-flow said no flow mod", out)
        return _from_priority(mod)

    def on(self, bridge: str) -> OfctlSwitch:
        return OfctlSwitch(self, bridge)


class OfctlSwitch:
    """The Switch of one bridge through ovs-ofctl (see switch.py): it understands every rule,
    at a process per call."""

    def __init__(self, ofctl: Ofctl, bridge: str) -> None:
        self._ofctl = ofctl
        self._bridge = bridge

    def apply(self, ops: Sequence[Op], cookie: int) -> None:
        self._ofctl.apply_bundle(self._bridge, [op_text(op, cookie) for op in ops])

    def replace(self, rules: Mapping[Identity, Actions], cookie: int) -> None:
        self._ofctl.replace_flows(self._bridge, [flow_text(Flow(identity, actions), cookie)
                                                 for identity, actions in rules.items()])

    def count(self) -> int:
        return self._ofctl.flow_count(self._bridge)

    def holds(self, rule: Flow) -> bool:
        # The switch's rules of its table and match (dump-flows takes no priority), and ours
        # as the switch writes it: one of them, priority, match and actions, in the same
        # words (ovs-ofctl reads both for us), is the rule.
        match = match_text(rule.match)
        lines = self._ofctl.dump_flows(self._bridge, f"table={rule.table}"
                                       + (f",{match}" if match else ""))
        wanted = self._ofctl.canonical(flow_text(rule, 0))
        return any(_from_priority(line) == wanted for line in lines)

    def answers(self) -> bool:
        try:
            self._ofctl.dump_flows(self._bridge, "table=99")  # an empty table: a cheap probe
            return True
        except CniError:
            return False


def _from_priority(line: str) -> str:
    """A rule's text from "priority=" on: cookie, table and counters, which dump-flows and
    parse-flow write differently, cut off."""
    return line[line.index("priority="):].strip()
