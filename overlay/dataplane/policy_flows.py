"""Network policy as OpenFlow rules: pure functions from a policy, the addresses its selectors
select and the local ports it polices, to rules. policy_state.py decides what to recompute.

Pipeline (tables in overlay/model.py). Endpoints no policy selects keep the fast path of
flows.py untouched; only a policed port's IP traffic (IPv4 and IPv6) takes a detour through
conntrack:

  table 0  CLASSIFY   (priority 105, above the port's admission rule and with the same match)
                      a policed port: reg0 = VNI, then ct(zone, table=EGRESS). Neighbour
                      solicitations and advertisements keep table 0's own rules (120): no detour.
  table 12 EGRESS     neighbour discovery (ICMPv6 133-136): on, untracked, as ARP never meets
                      a policy; established or related: on to FORWARD; invalid: dropped; new: the rules,
                      tried in the order of the reference evaluator (overlay/policy/evaluate.py)
                      as OpenFlow priorities; allow -> EGRESS_COMMIT; drop, or no rule: dropped.
  table 13 EGRESS_COMMIT  ct(commit, zone) and on to FORWARD.
  tables 20 FORWARD / 30 DELIVER  (priority 105, above the delivery rule to the port) a port
                      policed: reg1 = its port, ct(zone, table=INGRESS), whichever way the
                      packet came (a local port, a tunnel, the gateway). A port policed in one
                      direction only is allowed everything in the other, but through conntrack
                      all the same (subject_flows says why). Broadcast and multicast: the
                      network's replication rule (flows.network_flows) sends the copy for a
                      port whose ingress is policed to INGRESS with reg1 = that port, without
                      conntrack (policy_base_flows says why).
  table 90 INGRESS    as EGRESS, for the destination (known by reg1); allow -> INGRESS_COMMIT.
  table 91 INGRESS_COMMIT ct(commit, zone) and on to INGRESS_OUT (broadcast: no commit).
  table 92 INGRESS_OUT    out of the port reg1 names.

A rule is a conjunctive match (Antrea's design): one clause of rules for its subjects (the
local ports the policy selects: by source address for egress, by port for ingress), one for
its peers (addresses of the endpoints its selectors select, and CIDR prefixes less their
exceptions), one for its ports (masked TCP/UDP/SCTP destination ports). So it costs
|subjects| + |peers| + |ports| rules plus one for `conj_id`, not their product. A rule with
only one clause (any peer, any port) is plain.

Every rule of a network and direction has its own OpenFlow priority (policy_state.py keeps them
in the evaluator's order), so two rules never share an identity and the switch's counters of a
rule's conj_id rule count that rule alone.

Each network has its own conntrack zone (16 bits, while a VNI has 24: policy_state.py hands
them out and never lets two networks share one). Replies and later packets of an allowed
connection pass by ct_state; the first packet is judged. reject sends that packet to the
agent (a `controller` action) through REJECT_METER, and the agent answers with a TCP reset or
an ICMP unreachable (agent/rejects.py, policy/reject.py); what the meter does not let
through is dropped, as `drop` would.

IPv6 is policed as IPv4 is: a port is known by its addresses of both families, plus the
link-local address of its MAC once it has IPv6 (table 0 admits it as a source); CIDRs of
either family, less their exceptions, become prefixes; a rule gets rules only for the families
both its subjects and its peers have. Selectors select an endpoint's addresses from its record,
never its link-local one: link-local traffic is allowed by an ipBlock (fe80::/10) or a rule
without peers only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.dataplane.flows import MULTICAST, ND_NA, ND_NS, ND_RA, LocalPort, link_local
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
    ETH_IPV6,
    ICMP6,
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
NEIGHBOUR = 65001    # neighbour discovery, before conntrack's verdicts (ND is not tracked)
ND_RS = 133          # router solicitation (flows.py names the types that speak for someone)
ND_TYPES = (ND_RS, ND_RA, ND_NS, ND_NA)
FLOOD_COPY = 110     # ingress_commit: an allowed broadcast or multicast copy, not committed
UNICAST = "00:00:00:00:00:00/01:00:00:00:00:00"
TOP, BOTTOM = 64000, 10  # the range of rule priorities (policy_state.PriorityRange)

_PORT_FIELD = {6: "tcp_dst", 17: "tp_dst", 132: "sctp_dst"}

# reject: how many refused packets per second reach the agent, host-wide (one meter: a
# container that floods uses up the others' answers, never the agent's time).
REJECT_METER = Meter(meter_id=20, rate=100, burst=100)
REJECT: Actions = (Controller(meter_id=REJECT_METER.meter_id),)


@dataclass(frozen=True)
class CompiledRule:
    """One rule of a policy, placed: its OpenFlow priority and conjunction id, its subjects
    (by address for egress; by port and family for ingress, see subject_flows) and the
    addresses of its peers (None: any peer)."""

    direction: str         # "ingress" or "egress"
    index: int             # in the policy's list of that direction
    rule: Rule
    priority: int
    conj_id: int
    subjects: tuple[str, ...]
    peers: tuple[str, ...] | None
    subject_ports: tuple[tuple[int, int], ...] = ()  # (ofport, 4 or 6)


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
    """The CIDR less its exceptions, as prefixes (of the CIDR's family, IPv4 or IPv6)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [peer.cidr]
    for hole in peer.except_:
        if hole.version != peer.cidr.version:
            continue
        rest: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for net in nets:
            if hole.subnet_of(net):  # type: ignore[arg-type]
                rest += net.address_exclude(hole)  # type: ignore[arg-type]
            elif not net.subnet_of(hole):  # type: ignore[arg-type]
                rest.append(net)
        nets = rest
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def family(address: str) -> int:
    """4 or 6: the family of an address or prefix in its canonical text."""
    return 6 if ":" in address else 4


def _port_matches(vni: int, ports: Iterable[PortRange], families: set[int]) -> list[Match]:
    out: list[Match] = []
    for eth_type in (ETH_IP, ETH_IPV6):
        if (4 if eth_type == ETH_IP else 6) not in families:
            continue
        for p in ports:
            proto = PROTOCOL_NUMBERS[p.protocol]
            if p.port is None:
                out.append(match(reg0=vni, eth_type=eth_type, ip_proto=proto))
                continue
            field = _PORT_FIELD[proto]
            for value, mask in port_masks(p.port, p.end_port or p.port):
                text: int | str = value if mask == 0xFFFF else f"{value:#x}/{mask:#x}"
                out.append(match(reg0=vni, eth_type=eth_type, ip_proto=proto,
                                 **{field: text}))  # type: ignore[arg-type]
    return out


def _addr_match(vni: int, side: str, address: str) -> Match:
    """reg0 and one address (or prefix) as the packet's source or destination ("src"/"dst")."""
    if family(address) == 6:
        return match(reg0=vni, **IPV6, **{f"ipv6_{side}": address})  # type: ignore[arg-type]
    return match(reg0=vni, **IP, **{f"ipv4_{side}": address})  # type: ignore[arg-type]


def rule_flows(vni: int, placed: CompiledRule) -> list[Flow]:
    """The rules of one policy rule: its clauses and its conj_id rule, or plain rules.

    Only the families (IPv4, IPv6) that both its subjects and its peers have get rules: an
    IPv4 packet can never complete an IPv6 clause, so one conjunction serves both."""
    egress = placed.direction == "egress"
    table = EGRESS if egress else INGRESS
    mine, theirs = ("src", "dst") if egress else ("dst", "src")
    rule, prio = placed.rule, placed.priority
    families = {family(a) for a in placed.subjects} if egress else \
        {fam for _, fam in placed.subject_ports}
    if placed.peers is not None:
        families &= {family(a) for a in placed.peers}
    if not families:
        return []  # nobody to police, or a peer set that selects nobody: never matches
    subjects = [_addr_match(vni, mine, a) for a in placed.subjects if family(a) in families] \
        if egress else [delivered_to(vni, port, fam) for port, fam in placed.subject_ports
                        if fam in families]
    clauses = [subjects]
    if placed.peers is not None:
        clauses.append([_addr_match(vni, theirs, a) for a in placed.peers
                        if family(a) in families])
    if rule.ports:
        clauses.append(_port_matches(vni, rule.ports, families))
    verdict: Actions = (GotoTable(EGRESS_COMMIT if egress else INGRESS_COMMIT),) \
        if rule.action == "allow" else REJECT if rule.action == "reject" else DROP
    if len(clauses) == 1:
        return [flow(table, prio, m, verdict) for m in subjects]
    n = len(clauses)
    flows = {m: flow(table, prio, m, (Conjunction(placed.conj_id, k + 1, n),))
             for k, clause in enumerate(clauses) for m in clause}
    return [*flows.values(), flow(table, prio, match(conj_id=placed.conj_id), verdict)]


def policy_base_flows() -> list[Flow]:
    """Conntrack's verdicts, the same for every network: replies pass, invalid drops; and
    neighbour discovery as table 0 admits it passes, as ARP does (table 10 answers ARP before
    any policy): without it a policed dual-stack port would lose IPv6 altogether."""
    flows = []
    for table, onward in ((EGRESS, FORWARD), (INGRESS, INGRESS_OUT)):
        flows += [flow(table, NEIGHBOUR, match(**ICMP6, icmp_type=kind), (GotoTable(onward),))
                  for kind in ND_TYPES]
        # A broadcast or multicast copy is judged by the receiver's rules every time (never
        # "established"): conntrack may know its sender's connection from the sender's own
        # egress check on this host, and that says nothing of what this receiver accepts.
        to = UNICAST if table == INGRESS else None
        for state in ("+trk+est-inv", "+trk+rel-inv"):
            flows.append(flow(table, ESTABLISHED, match(ct_state=state, eth_dst=to),
                              (GotoTable(onward),)))
        flows.append(flow(table, ESTABLISHED - 1, match(ct_state="+trk+inv"), DROP))
        flows.append(flow(table, 0, match(), DROP))  # no rule allowed it: default deny
    # An allowed broadcast or multicast copy opens no connection (nobody answers from a
    # broadcast address): delivered without a commit.
    flows.append(flow(INGRESS_COMMIT, FLOOD_COPY, match(eth_dst=MULTICAST),
                      (GotoTable(INGRESS_OUT),)))
    return flows


def network_policy_flows(vni: int, zone: int) -> list[Flow]:
    """A network with policed ports: its commits, in its zone, for IPv4 and IPv6."""
    return [flow(table, 100, match(reg0=vni, **proto), (Ct(zone=zone, commit=True),
                                                        GotoTable(onward)))
            for table, onward in ((EGRESS_COMMIT, FORWARD), (INGRESS_COMMIT, INGRESS_OUT))
            for proto in (IP, IPV6)]


def subject_addresses(port: LocalPort) -> list[str]:
    """The addresses a policed port is known by in the policy tables: its own, and with IPv6
    the link-local address of its MAC, which table 0 admits as a source too."""
    v6 = [ip for ip in port.ips if ":" in ip]
    return [*(ip for ip in port.ips if ":" not in ip), *v6, *([link_local(port.mac)] if v6 else [])]


def families(port: LocalPort) -> list[int]:
    """The families of the port's addresses (4, 6)."""
    return sorted({family(ip) for ip in port.ips})


def delivered_to(vni: int, ofport: int, fam: int) -> Match:
    """A packet on its way to this port, of this family: ingress knows its subject by port
    (reg1, loaded by the detour or by the flood's copy), not by destination address, which a
    broadcast or multicast copy does not carry."""
    return match(reg0=vni, reg1=ofport, eth_type=ETH_IP if fam == 4 else ETH_IPV6)


def subject_flows(port: LocalPort, zone: int, *, ingress: bool, egress: bool) -> list[Flow]:
    """The detours of one policed local port (see the top).

    A port policed in one direction takes both detours: conntrack must see its connections
    either way, or the replies to what it may do in the unpoliced direction would be judged
    as new connections by the policed one (a reply to its own ping, refused as incoming ICMP).
    The unpoliced direction allows everything, below every rule.

    A port without IPv6 addresses sends none (table 0), and what IPv6 comes to it takes the
    detour only when its ingress is policed: there is no rule for it, so it is denied."""
    addresses = subject_addresses(port)
    to_ct: tuple[Action, ...] = (Load("reg0", port.vni), Ct(zone=zone, table=EGRESS))
    flows = [flow(CLASSIFY, REDIRECT, _source(port, ip), to_ct) for ip in addresses]
    flows += [flow(EGRESS, DENIED if egress else UNPOLICED, _addr_match(port.vni, "src", ip),
                   DROP if egress else (GotoTable(EGRESS_COMMIT),)) for ip in addresses]
    # IPv4 always (the detour as it was before IPv6); IPv6 where it has some, or where the
    # port's ingress is policed (then denied: no rule names a family it does not have).
    arriving = sorted({4, *families(port), *([6] if ingress else [])})
    detour: tuple[Action, ...] = (Load("reg1", port.ofport), Ct(zone=zone, table=INGRESS))
    for fam in arriving:
        at = match(reg0=port.vni, eth_dst=port.mac, eth_type=ETH_IP if fam == 4 else ETH_IPV6)
        flows += [flow(FORWARD, REDIRECT, at, detour), flow(DELIVER, REDIRECT, at, detour),
                  flow(INGRESS, DENIED if ingress else UNPOLICED,
                       delivered_to(port.vni, port.ofport, fam),
                       DROP if ingress else (GotoTable(INGRESS_COMMIT),))]
    flows.append(flow(INGRESS_OUT, 100, match(reg0=port.vni, reg1=port.ofport),
                      (Output(port.ofport),)))
    return flows


def _source(port: LocalPort, address: str) -> Match:
    if family(address) == 6:
        return match(in_port=port.ofport, eth_src=port.mac, **IPV6, ipv6_src=address)
    return match(in_port=port.ofport, eth_src=port.mac, **IP, ipv4_src=address)
