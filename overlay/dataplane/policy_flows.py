"""Network policy as OpenFlow rules: pure functions from a policy, the addresses its selectors
select and the local ports it polices, to rules. policy_state.py decides what to recompute.

Pipeline (tables in overlay/model.py). Endpoints no policy selects keep the fast path of
flows.py untouched; only a policed port's IPv4 traffic takes a detour through conntrack:

  table 0  CLASSIFY   (priority 105, above the port's admission rule and with the same match)
                      a policed port: reg0 = VNI, then ct(zone, table=EGRESS).
  table 12 EGRESS     established or related: on to FORWARD; invalid: dropped; new: the rules,
                      tried in the order of the reference evaluator (overlay/policy/evaluate.py)
                      as OpenFlow priorities; allow -> EGRESS_COMMIT; drop, or no rule: dropped.
  table 13 EGRESS_COMMIT  ct(commit, zone) and on to FORWARD.
  tables 20 FORWARD / 30 DELIVER  (priority 105, above the delivery rule to the port) a port
                      policed: ct(zone, table=INGRESS), whichever way the packet came (a local
                      port, a tunnel, the gateway). A port policed in one direction only is
                      allowed everything in the other, but through conntrack all the same
                      (subject_flows says why).
  table 90 INGRESS    as EGRESS, for the destination; allow -> INGRESS_COMMIT.
  table 91 INGRESS_COMMIT ct(commit, zone) and on to INGRESS_OUT.
  table 92 INGRESS_OUT    out of the destination's port.

A rule is a conjunctive match (Antrea's design): one clause of rules for its subjects (the
local ports the policy selects, by address), one for its peers (addresses of the endpoints its
selectors select, and CIDR prefixes less their exceptions), one for its ports (masked
TCP/UDP/SCTP destination ports). So it costs |subjects| + |peers| + |ports| rules plus one
for `conj_id`, not their product. A rule with only one clause (any peer, any port) is plain.

Every rule of a network and direction has its own OpenFlow priority (policy_state.py keeps them
in the evaluator's order), so two rules never share an identity and the switch's counters of a
rule's conj_id rule count that rule alone.

Each network has its own conntrack zone (16 bits, while a VNI has 24: policy_state.py hands
them out and never lets two networks share one). Replies and later packets of an allowed
connection pass by ct_state; the first packet is judged. reject sends that packet to the
agent (a `controller` action) through REJECT_METER, and the agent answers with a TCP reset or
an ICMP unreachable (agent/rejects.py, policy/reject.py); what the meter does not let
through is dropped, as `drop` would.
Broadcast and multicast (flooded by table 20's replication rule) are not policed yet. IPv6
rules are not compiled yet, so a port's IPv6 is denied in each direction a policy polices (it
fails closed: a dual-stack endpoint a policy isolates is not reachable around the policy over
IPv6).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.dataplane.flows import LocalPort
from overlay.model import (
    CLASSIFY,
    DELIVER,
    EGRESS,
    EGRESS_COMMIT,
    FORWARD,
    INGRESS,
    INGRESS_COMMIT,
    INGRESS_OUT,
)
from overlay.ovs.flow import (
    DROP,
    ETH_IP,
    IP,
    IPV6,
    Action,
    Actions,
    Conjunction,
    Controller,
    Ct,
    Flow,
    GotoTable,
    Load,
    Match,
    Output,
    flow,
    match,
)
from overlay.ovs.meters import Meter
from overlay.policy.model import PROTOCOL_NUMBERS, CidrPeer, PortRange, Rule

REDIRECT = 105       # above the fast path's admission and delivery rules (100)
UNPOLICED = 2        # a policed port's other direction: allowed, below every rule
DENIED = 1           # a policed port's default deny, per port: its counters say who was denied
ESTABLISHED = 65000  # replies and later packets, before any rule
TOP, BOTTOM = 64000, 10  # the range of rule priorities (policy_state.PriorityRange)

_PORT_FIELD = {6: "tcp_dst", 17: "tp_dst", 132: "sctp_dst"}

# reject: how many refused packets per second reach the agent, host-wide (one meter: a
# container that floods uses up the others' answers, never the agent's time).
REJECT_METER = Meter(meter_id=20, rate=100, burst=100)
REJECT: Actions = (Controller(meter_id=REJECT_METER.meter_id),)


@dataclass(frozen=True)
class CompiledRule:
    """One rule of a policy, placed: its OpenFlow priority and conjunction id, the addresses
    of its subjects and of its peers (None: any peer)."""

    direction: str         # "ingress" or "egress"
    index: int             # in the policy's list of that direction
    rule: Rule
    priority: int
    conj_id: int
    subjects: tuple[str, ...]
    peers: tuple[str, ...] | None


def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """The fewest (value, mask) pairs that cover exactly ports low..high (16 bits)."""
    out: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def cidr_prefixes(peer: CidrPeer) -> list[str]:
    """The CIDR less its exceptions, as prefixes (IPv4 only: IPv6 is not policed yet)."""
    if peer.cidr.version != 4:
        return []
    nets: list[ipaddress.IPv4Network] = [peer.cidr]
    for hole in peer.except_:
        if hole.version != 4:
            continue
        rest: list[ipaddress.IPv4Network] = []
        for net in nets:
            if hole.subnet_of(net):
                rest += net.address_exclude(hole)
            elif not net.subnet_of(hole):
                rest.append(net)
        nets = rest
    return [str(n) for n in sorted(nets)]


def _port_matches(vni: int, ports: Iterable[PortRange]) -> list[Match]:
    out: list[Match] = []
    for p in ports:
        proto = PROTOCOL_NUMBERS[p.protocol]
        if p.port is None:
            out.append(match(reg0=vni, eth_type=ETH_IP, ip_proto=proto))
            continue
        field = _PORT_FIELD[proto]
        for value, mask in port_masks(p.port, p.end_port or p.port):
            text: int | str = value if mask == 0xFFFF else f"{value:#x}/{mask:#x}"
            out.append(match(reg0=vni, eth_type=ETH_IP, ip_proto=proto,
                             **{field: text}))  # type: ignore[arg-type]
    return out


def _addr_match(vni: int, field: str, address: str) -> Match:
    return match(reg0=vni, **IP, **{field: address})  # type: ignore[arg-type]


def rule_flows(vni: int, placed: CompiledRule) -> list[Flow]:
    """The rules of one policy rule: its clauses and its conj_id rule, or plain rules."""
    egress = placed.direction == "egress"
    table = EGRESS if egress else INGRESS
    mine, theirs = ("ipv4_src", "ipv4_dst") if egress else ("ipv4_dst", "ipv4_src")
    rule, prio = placed.rule, placed.priority
    subjects = [_addr_match(vni, mine, a) for a in placed.subjects if ":" not in a]
    if not subjects or (placed.peers is not None and not placed.peers):
        return []  # nobody to police, or a peer set that selects nobody: never matches
    clauses = [subjects]
    if placed.peers is not None:
        clauses.append([_addr_match(vni, theirs, a) for a in placed.peers])
    if rule.ports:
        clauses.append(_port_matches(vni, rule.ports))
    verdict: Actions = (GotoTable(EGRESS_COMMIT if egress else INGRESS_COMMIT),) \
        if rule.action == "allow" else REJECT if rule.action == "reject" else DROP
    if len(clauses) == 1:
        return [flow(table, prio, m, verdict) for m in subjects]
    n = len(clauses)
    flows = {m: flow(table, prio, m, (Conjunction(placed.conj_id, k + 1, n),))
             for k, clause in enumerate(clauses) for m in clause}
    return [*flows.values(), flow(table, prio, match(conj_id=placed.conj_id), verdict)]


def policy_base_flows() -> list[Flow]:
    """Conntrack's verdicts, the same for every network: replies pass, invalid drops."""
    flows = []
    for table, onward in ((EGRESS, FORWARD), (INGRESS, INGRESS_OUT)):
        for state in ("+trk+est-inv", "+trk+rel-inv"):
            flows.append(flow(table, ESTABLISHED, match(ct_state=state), (GotoTable(onward),)))
        flows.append(flow(table, ESTABLISHED - 1, match(ct_state="+trk+inv"), DROP))
        flows.append(flow(table, 0, match(), DROP))  # no rule allowed it: default deny
    return flows


def network_policy_flows(vni: int, zone: int) -> list[Flow]:
    """A network with policed ports: its commits, in its zone."""
    return [
        flow(EGRESS_COMMIT, 100, match(reg0=vni, **IP),
             (Ct(zone=zone, commit=True), GotoTable(FORWARD))),
        flow(INGRESS_COMMIT, 100, match(reg0=vni, **IP),
             (Ct(zone=zone, commit=True), GotoTable(INGRESS_OUT))),
    ]


def subject_flows(port: LocalPort, zone: int, *, ingress: bool, egress: bool) -> list[Flow]:
    """The detours of one policed local port (see the top).

    A port policed in one direction takes both detours: conntrack must see its connections
    either way, or the replies to what it may do in the unpoliced direction would be judged
    as new connections by the policed one (a reply to its own ping, refused as incoming ICMP).
    The unpoliced direction allows everything, below every rule."""
    v4 = [ip for ip in port.ips if ":" not in ip]
    to_ct: tuple[Action, ...] = (Load("reg0", port.vni), Ct(zone=zone, table=EGRESS))
    flows = [flow(CLASSIFY, REDIRECT, match(in_port=port.ofport, eth_src=port.mac, **IP,
                                            ipv4_src=ip), to_ct) for ip in v4]
    at = match(reg0=port.vni, eth_dst=port.mac, **IP)
    flows += [flow(FORWARD, REDIRECT, at, (Ct(zone=zone, table=INGRESS),)),
              flow(DELIVER, REDIRECT, at, (Ct(zone=zone, table=INGRESS),)),
              flow(INGRESS_OUT, 100, match(reg0=port.vni, eth_dst=port.mac),
                   (Output(port.ofport),))]
    for table, policed, field, onward in ((EGRESS, egress, "ipv4_src", EGRESS_COMMIT),
                                          (INGRESS, ingress, "ipv4_dst", INGRESS_COMMIT)):
        flows += [flow(table, DENIED if policed else UNPOLICED,
                       match(reg0=port.vni, **IP, **{field: ip}),  # type: ignore[arg-type]
                       DROP if policed else (GotoTable(onward),)) for ip in v4]
    # IPv6 is not compiled yet: denied outright where the port is policed, never let around
    # the policy (the same priority as the IPv4 detours, which match IPv4 only).
    if egress:
        flows.append(flow(CLASSIFY, REDIRECT, match(in_port=port.ofport, **IPV6), DROP))
    if ingress:
        at6 = match(reg0=port.vni, eth_dst=port.mac, **IPV6)
        flows += [flow(FORWARD, REDIRECT, at6, DROP), flow(DELIVER, REDIRECT, at6, DROP)]
    return flows
