"""Reading `ovs-appctl ofproto/trace` output in our own terms: the walk through classify, ARP,
forward and deliver, and the one verdict at its end. Pure: text in, dataclasses out.

Only the integration bridge's section counts. With the userspace datapath the trace goes on
into br-phy (the tunnel's underlay), which says how the packet leaves the host, not where the
overlay sends it.

A verdict is decided by the last table the packet reached and the actions it met there:
output to the tunnel port is "tunneled", output to a network's gateway port is "gateway" (the
host kernel takes it from there: trace_egress), output to another port is "delivered", IN_PORT
in the ARP table is "answered by ARP in OVS", anything else is "dropped" (our tables end in an explicit
priority-0 drop, so that is where an unmatched packet ends). Why it was dropped is for the
caller to say: only it knows what the control plane holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from overlay.model import TABLE_NAMES

_STEP = re.compile(r"^\s*(\d+)\. (?:(.*), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?\s*$")
_NO_MATCH = re.compile(r"^\s*(\d+)\. No match")
_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)')


@dataclass
class Step:
    table: int
    match: str
    priority: int
    cookie: str
    actions: list[str] = field(default_factory=list)

    @property
    def table_name(self) -> str:
        return TABLE_NAMES.get(self.table, f"table {self.table}")


def parse_steps(text: str, bridge: str) -> list[Step]:
    """The flows the packet met on `bridge`, in order, each with its actions."""
    steps: list[Step] = []
    current_bridge = ""
    for line in text.splitlines():
        found = _BRIDGE.match(line)
        if found:
            current_bridge = found.group(1)
            continue
        if line.startswith(("Final flow:", "Megaflow:", "Datapath actions:")):
            current_bridge = ""
        if current_bridge != bridge or not line.strip() or line.startswith("---"):
            continue
        step = _STEP.match(line)
        if step:
            steps.append(Step(int(step.group(1)), step.group(2) or "", int(step.group(3)),
                              step.group(4) or ""))
            continue
        miss = _NO_MATCH.match(line)
        if miss:
            steps.append(Step(int(miss.group(1)), "", -1, "", ["drop"]))
            continue
        stripped = line.strip()
        if steps and not stripped.startswith("->"):  # "->" lines are OVS's commentary
            steps[-1].actions.append(stripped)
    return steps


@dataclass
class Verdict:
    kind: str                       # delivered | tunneled | gateway | arp-reply | dropped | rejected
    table: int = -1
    table_name: str = ""
    ports: list[int] = field(default_factory=list)   # delivered, gateway: local ofports
    vtep: str = ""                  # tunneled
    vni: int = 0
    answer_mac: str = ""            # arp-reply: the MAC OVS answered with
    reason: str = ""                # filled in by the caller (dropped), or extra detail

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def verdict(steps: list[Step], tunnel_ofport: int,
            gateway_ports: Mapping[int, str] | None = None) -> Verdict:
    """`gateway_ports`: ofport -> name of the gateway ports (ovg<vni>) on the bridge."""
    if not steps:
        return Verdict("dropped", reason="the bridge has no flow for it")
    last = steps[-1]
    name = last.table_name
    outputs: list[int] = []
    vtep, vni, answer = "", 0, ""
    for action in (a for s in steps for a in s.actions):
        if action.startswith("output:") and action[7:].isdigit():
            outputs.append(int(action[7:]))
        elif action.endswith("->tun_dst") and action.startswith("set_field:"):
            vtep = action[len("set_field:"):-len("->tun_dst")]
        elif action.endswith("->tun_id") and action.startswith("set_field:"):
            vni = _int(action[len("set_field:"):-len("->tun_id")])
        elif action.endswith("->arp_sha") and action.startswith("set_field:"):
            answer = action[len("set_field:"):-len("->arp_sha")]
    if "IN_PORT" in last.actions and last.table == 10:
        return Verdict("arp-reply", last.table, name, answer_mac=answer)
    if tunnel_ofport in outputs:
        local = [p for p in outputs if p != tunnel_ofport]
        return Verdict("tunneled", last.table, name, ports=local, vtep=vtep, vni=vni)
    to_gateway = [p for p in outputs if p in (gateway_ports or {})]
    if to_gateway:
        return Verdict("gateway", last.table, name, ports=to_gateway)
    if outputs:
        return Verdict("delivered", last.table, name, ports=outputs)
    if any(a.startswith("controller(") for a in last.actions):  # a reject rule: to the agent
        return Verdict("rejected", last.table, name)
    return Verdict("dropped", last.table, name)
