"""OpenFlow rules as values: what a rule matches, what it does, and the operations on a table.

dataplane/flows.py builds these; ofencode.py turns them into OpenFlow 1.4 flow mods without
reading any text; flowtext.py renders them as ovs-ofctl text, for the fallback path (ofctl.py)
and for people. A new match field is one name here, one OXM in ofencode.py and one keyword in
flowtext.py. (Antrea's pkg/ovs/openflow FlowBuilder/Action are the model; the shapes are ours.)

Why a Match is a flat tuple, not an object with a slot per field: the agent holds every remote
endpoint's rules (100,000 at 50,000 endpoints), and most rules match two or three fields out of
twenty. A tuple of (name, value, name, value, ...) holding only the fields set costs what the
rule's text did, hashes and compares in C (the flow table keys its dicts by identity), and its
values are the endpoint's own MAC and address strings, shared rather than copied. Addresses are
kept in their canonical text ("10.0.0.1", "fd00::1", "0a:58:0a:00:00:01", with "/mask" where
masked): both the encoder and the renderer read that form directly. Fields are held in FIELDS
order, which is the order the text has always been written in, so equal matches are equal
tuples however they were built.

An action is a small frozen value; a rule's actions are a tuple of them, and the empty tuple
drops. ArpReply is the ARP responder: eight primitive actions that differ per endpoint only in
a MAC and an address, held as those two (it is half of every remote endpoint's rules) and
expanded only when rendered or encoded in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypedDict

# Every match field, in the order a match holds (and the text writes) them. eth_type and
# ip_proto are written as one protocol keyword (ip, arp, ipv6, icmp6, udp, udp6).
FIELDS = (
    "conj_id", "in_port", "reg0", "reg1", "ct_state", "ct_zone", "eth_src", "eth_dst", "tun_src",
    "tun_dst", "tun_id", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
    "tp_src", "tp_dst", "tcp_dst", "sctp_dst", "icmp_type", "icmp_code", "nd_target", "nd_sll",
    "nd_tll", "arp_op", "arp_spa", "arp_tpa", "arp_sha",
)
# Network policy (overlay/dataplane/policy_flows.py) adds the conntrack state and zone, the id
# of a completed conjunctive match, and TCP/SCTP destination ports, which a rule matches with a
# mask ("0x50/0xfff0": ports 80-95) so that a port range costs a few rules, not one per port.
# ct_state is written as OVS writes its flags ("+trk+est-inv"): set, unset, others any.
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CT_FLAGS = {"new": CT_NEW, "est": CT_EST, "rel": CT_REL, "rpl": CT_RPL, "inv": CT_INV,
            "trk": CT_TRK}
_ORDER = {name: rank for rank, name in enumerate(FIELDS)}

ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 6, 17, 58, 132


class Protocol(TypedDict, total=False):
    eth_type: int
    ip_proto: int


# Protocol shorthands, as keyword arguments of match(): match(in_port=5, **IP, ipv4_src=...).
IP: Protocol = {"eth_type": ETH_IP}
ARP: Protocol = {"eth_type": ETH_ARP}
IPV6: Protocol = {"eth_type": ETH_IPV6}
ICMP6: Protocol = {"eth_type": ETH_IPV6, "ip_proto": PROTO_ICMPV6}
UDP: Protocol = {"eth_type": ETH_IP, "ip_proto": PROTO_UDP}
UDP6: Protocol = {"eth_type": ETH_IPV6, "ip_proto": PROTO_UDP}

Value = int | str


class Match(tuple[str | Value, ...]):
    """(name, value, name, value, ...) in FIELDS order; build one with match()."""

    __slots__ = ()

    def get(self, name: str) -> Value | None:
        for i in range(0, len(self), 2):
            if self[i] == name:
                return self[i + 1]
        return None

    def items(self) -> list[tuple[str, Value]]:
        return [(str(self[i]), self[i + 1]) for i in range(0, len(self), 2)]

    def holds(self, other: Match) -> bool:
        """Does this match set every field `other` sets, to the same value? (A probe's filter:
        the rules a dump-flows with `other` as its match would list, for exact values.)"""
        mine = dict(self.items())
        return all(mine.get(name) == value for name, value in other.items())


def match(*, conj_id: int | None = None, in_port: int | None = None, reg0: int | None = None,
          reg1: int | None = None, ct_state: str | None = None, ct_zone: int | None = None,
          eth_src: str | None = None,
          eth_dst: str | None = None, tun_src: str | None = None, tun_dst: str | None = None,
          tun_id: int | None = None, eth_type: int | None = None, ip_proto: int | None = None,
          ipv4_src: str | None = None, ipv4_dst: str | None = None,
          ipv6_src: str | None = None, ipv6_dst: str | None = None, tp_src: int | None = None,
          tp_dst: int | str | None = None, tcp_dst: int | str | None = None,
          sctp_dst: int | str | None = None, icmp_type: int | None = None,
          icmp_code: int | None = None, nd_target: str | None = None,
          nd_sll: str | None = None, nd_tll: str | None = None, arp_op: int | None = None,
          arp_spa: str | None = None, arp_tpa: str | None = None,
          arp_sha: str | None = None) -> Match:
    """A match of the fields given (None: any value)."""
    given = locals()  # the parameters, in FIELDS order
    pairs: list[str | Value] = []
    for name in FIELDS:
        value = given[name]
        if value is not None:
            pairs += (name, value)
    return Match(pairs)


# --- actions ----------------------------------------------------------------------------------

IN_PORT = 0xFFFFFFF8  # output to the port the packet came in on


@dataclass(frozen=True, slots=True)
class Output:
    port: int  # an ofport, or IN_PORT


@dataclass(frozen=True, slots=True)
class GotoTable:
    table: int


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Look the packet up in `table` and come back (a call, unlike GotoTable)."""

    table: int


@dataclass(frozen=True, slots=True)
class Load:
    field: str  # "reg0", "reg1" or "arp_op"
    value: int


@dataclass(frozen=True, slots=True)
class SetField:
    field: str  # "tun_dst", "tun_id", "eth_src", "arp_sha", "arp_spa"
    value: Value


@dataclass(frozen=True, slots=True)
class Move:
    src: str  # "eth_src" -> "eth_dst", "arp_sha" -> "arp_tha", "arp_spa" -> "arp_tpa"
    dst: str


@dataclass(frozen=True, slots=True)
class ArpReply:
    """Answer an ARP request in place: `mac` has `ip`. See expand()."""

    mac: str
    ip: str

    def expand(self) -> tuple[Action, ...]:
        # Turn the request around: swap Ethernet addresses, make it a reply, fill in the
        # answer, and send it back out of the port it came in on.
        return (Move("eth_src", "eth_dst"), SetField("eth_src", self.mac), Load("arp_op", 2),
                Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
                SetField("arp_sha", self.mac), SetField("arp_spa", self.ip), Output(IN_PORT))


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through conntrack in `zone`: with `table`, look it up again there with
    its ct_state known (a recirculation); with `commit`, remember its connection, so that the
    replies and later packets of it show +est."""

    zone: int
    table: int | None = None
    commit: bool = False


@dataclass(frozen=True, slots=True)
class Conjunction:
    """This rule is clause `clause` (1-based) of `clauses` of conjunctive match `id`: the
    packet matches `conj_id=id` once it matched one rule of every clause (at one priority)."""

    id: int
    clause: int
    clauses: int


@dataclass(frozen=True, slots=True)
class Controller:
    """Send the packet to the controllers (a packet-in: the agent's reject answerer,
    agent/rejects.py) through meter `meter_id`: the meter bounds how many packets per second
    reach the agent, and drops the rest in the datapath. The whole packet: ovs-vswitchd does
    not buffer packets, and then sends all of it whatever a max_len says (seen on 3.1)."""

    meter_id: int


Action = (Output | GotoTable | Resubmit | Load | SetField | Move | ArpReply | Ct | Conjunction
          | Controller)
Actions = tuple[Action, ...]
DROP: Actions = ()


class Identity(tuple[str | Value, ...]):
    """What OpenFlow itself tells two rules of a table apart by: table, priority and match.

    Held as one flat tuple (table, priority, name, value, ...), not as a pair of table and
    priority around a Match: it is the key of every rule the flow table holds (100,000 at
    50,000 remote endpoints), and the second tuple cost 64 bytes a rule (6 MB at 50,000).
    """

    __slots__ = ()

    def __new__(cls, table: int, priority: int, match: Match) -> Identity:
        return tuple.__new__(cls, (table, priority, *match))

    @property
    def table(self) -> int:
        return int(self[0])

    @property
    def priority(self) -> int:
        return int(self[1])

    @property
    def match(self) -> Match:
        return tuple.__new__(Match, self[2:])

    def __repr__(self) -> str:
        return f"Identity({self[0]}, {self[1]}, {tuple(self[2:])})"


class Flow(NamedTuple):
    """A rule: an identity and its actions (the cookie is the writer's, given when sent)."""

    identity: Identity
    actions: Actions

    @property
    def table(self) -> int:
        return self.identity.table

    @property
    def priority(self) -> int:
        return self.identity.priority

    @property
    def match(self) -> Match:
        return self.identity.match


def flow(table: int, priority: int, m: Match, actions: Actions) -> Flow:
    return Flow(Identity(table, priority, m), actions)


ADD, MODIFY, DELETE = "add", "modify_strict", "delete_strict"


class Op(NamedTuple):
    """One change to a switch's table: ADD, MODIFY or DELETE (strict: this identity only)."""

    kind: str
    identity: Identity
    actions: Actions = DROP
