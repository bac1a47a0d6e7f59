"""Which policy and rule decided a traced packet, in words (pure).

The switch's walk says whether the packet went through a policy table (12 for the source's
egress, 90 for the destination's ingress: docs/policy.md) and whether it came out; the policies
in etcd and the ends' labels say which rule decided, by the reference evaluator
(overlay/policy/evaluate.py), the same rules the flows were compiled from. A trace is the first
packet of a connection: what conntrack lets through later is not judged again.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from overlay.model import EGRESS, INGRESS
from overlay.policy.evaluate import Direction, verdict

if TYPE_CHECKING:
    from overlay.cli.trace import Cluster, Endpoint, Hop, Request

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}


def _labels(e: Endpoint | None) -> dict[str, str] | None:
    return dict(e.labels) if e is not None else None


def decision(direction: Direction, req: Request, cluster: Cluster) -> str:
    """"ingress policy of db0: allowed by policy db, rule 0" and the like."""
    src, dst, pkt = req.src, req.dst, req.packet
    same = dst if dst is not None and dst.network == src.network else None
    subject, peer, peer_ip = (src, same, pkt.dst_ip) if direction == "egress" else \
        (same, src, pkt.src_ip)
    if subject is None:
        return ""
    policies = [p for p in cluster.policies if p.network == src.network]
    v = verdict(policies, direction=direction, subject=dict(subject.labels),
                peer_labels=_labels(peer), peer_ip=ipaddress.ip_address(peer_ip),
                protocol=PROTOCOLS.get(pkt.proto, 0), port=pkt.dport or None)
    who = f"{direction} policy of {subject.container_id}"
    if v.policy is None:
        if v.action == "allow":
            return f"{who}: allowed (no policy selects it in this direction)"
        return f"{who}: denied, no rule of the policies that select it allows this (default deny)"
    verb = "allowed" if v.action == "allow" else f"denied ({v.action})"
    return f"{who}: {verb} by policy {v.policy}, {direction} rule {v.rule}"


def annotate(hop: Hop, req: Request, cluster: Cluster) -> None:
    """Add what policy decided to the hop's summary (and the reason of a drop there)."""
    tables = {s.table for s in hop.steps}
    directions: tuple[tuple[int, Direction], ...] = ((EGRESS, "egress"), (INGRESS, "ingress"))
    notes = [decision(d, req, cluster) for t, d in directions if t in tables]
    notes = [n for n in notes if n]
    if not notes:
        return
    if hop.verdict.kind in ("dropped", "rejected") and hop.verdict.table in (EGRESS, INGRESS):
        hop.verdict.reason = notes[-1]
        answered = "; the agent answers the sender with a TCP reset or an ICMP unreachable" \
            if hop.verdict.kind == "rejected" else ""
        hop.summary = f"{hop.verdict.kind} at table {hop.verdict.table} " \
                      f"({hop.verdict.table_name}): {notes[-1]}{answered}"
        return
    hop.summary += "; " + "; ".join(notes)
