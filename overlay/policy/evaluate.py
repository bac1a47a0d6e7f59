"""The reference evaluator: what a policy set decides for one packet, written to be obviously
right rather than fast.

The switch enforces policies with flows compiled in overlay/dataplane/; the property tests
compare those flows' decisions with this function, and `overlayctl trace` uses it to name the
policy and rule behind a verdict. Semantics (docs/policy.md):

- the policies that apply are those of the subject's network whose selector matches the
  subject and that police this direction; when none applies, everything is allowed;
- otherwise rules are tried in order of (priority, drop/reject before allow, policy name, rule
  index) and the first whose peer and port both match decides; none matches -> drop;
- replies of allowed connections pass by conntrack, which is not this function's concern;
  neither is neighbour discovery (ICMPv6 133-136), which passes before any policy, as ARP does;
- addresses of either family: a CIDR peer matches only its own family; a broadcast or
  multicast packet is judged as any first packet (ingress: the sender is the peer; egress: the
  group or broadcast address is, with no labels).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from overlay.policy.labels import Labels
from overlay.policy.model import (
    PROTOCOL_NUMBERS,
    Action,
    CidrPeer,
    Peer,
    Policy,
    PortRange,
    Rule,
    Selector,
)

Direction = Literal["ingress", "egress"]

# drop and reject rank before allow at the same priority: a deny an operator wrote wins a tie.
ACTION_RANK: dict[Action, int] = {"drop": 0, "reject": 0, "allow": 1}


@dataclass(frozen=True)
class Verdict:
    action: Action
    policy: str | None   # None with rule None: no rule decided (no policy applies, or default deny)
    rule: int | None     # index in the policy's ingress or egress list


ALLOW_UNPOLICED = Verdict("allow", None, None)
DEFAULT_DENY = Verdict("drop", None, None)


def rules_of(policy: Policy, direction: Direction) -> tuple[Rule, ...] | None:
    return policy.ingress if direction == "ingress" else policy.egress


def ordered_rules(policies: Iterable[Policy], direction: Direction
                  ) -> list[tuple[Policy, int, Rule]]:
    """Every rule of these policies in the order they are tried."""
    found = [(p, i, r) for p in policies for i, r in enumerate(rules_of(p, direction) or ())]
    found.sort(key=lambda t: (t[0].priority, ACTION_RANK[t[2].action], t[0].name, t[1]))
    return found


def peer_matches(peer: Peer, peer_labels: Labels | None, peer_ip: IPv4Address | IPv6Address
                 ) -> bool:
    if isinstance(peer, Selector):
        # peer_labels None: the peer is no endpoint of this network; no selector picks it.
        return peer_labels is not None and peer.matches(peer_labels)
    assert isinstance(peer, CidrPeer)
    if peer_ip.version != peer.cidr.version or peer_ip not in peer.cidr:
        return False
    return not any(peer_ip in net for net in peer.except_)


def port_matches(ports: tuple[PortRange, ...], protocol: int, port: int | None) -> bool:
    if not ports:
        return True
    for wanted in ports:
        if PROTOCOL_NUMBERS[wanted.protocol] != protocol:
            continue  # ICMP (or any protocol without ports) never equals one of these
        if wanted.port is None:
            return True
        if port is not None and wanted.port <= port <= (wanted.end_port or wanted.port):
            return True
    return False


def rule_matches(rule: Rule, *, peer_labels: Labels | None, peer_ip: IPv4Address | IPv6Address,
                 protocol: int, port: int | None) -> bool:
    peer_ok = not rule.peers or any(peer_matches(p, peer_labels, peer_ip) for p in rule.peers)
    return peer_ok and port_matches(rule.ports, protocol, port)


def applicable(policies: Iterable[Policy], *, network: str | None, direction: Direction,
               subject: Labels) -> list[Policy]:
    """The policies that police `subject` in this direction (network None: do not filter)."""
    return [p for p in policies
            if (network is None or p.network == network)
            and rules_of(p, direction) is not None and p.selector.matches(subject)]


def verdict(policies: Iterable[Policy], *, direction: Direction, subject: Labels,
            peer_labels: Labels | None, peer_ip: IPv4Address | IPv6Address, protocol: int,
            port: int | None, network: str | None = None) -> Verdict:
    """What these policies decide for one packet of a new connection.

    `subject` is the endpoint whose policies apply (the destination for ingress, the source for
    egress), `peer_*` the other end: its labels when it is an endpoint of the same network,
    None otherwise. `policies` are the subject network's (pass `network` to filter a larger set).
    """
    chosen = applicable(policies, network=network, direction=direction, subject=subject)
    if not chosen:
        return ALLOW_UNPOLICED
    for policy, index, rule in ordered_rules(chosen, direction):
        if rule_matches(rule, peer_labels=peer_labels, peer_ip=peer_ip, protocol=protocol,
                        port=port):
            return Verdict(rule.action, policy.name, index)
    return DEFAULT_DENY
