"""Policies as people read them: the one-line selector, a rule in words, the list's rows.

`overlayctl policy show` prints describe(); `--json` prints policy_to_dict() instead, the
same JSON etcd holds. Kept apart from the commands so trace's explanation can say a rule the
same way.
"""

from __future__ import annotations

from overlay.policy.model import CidrPeer, Peer, Policy, PortRange, Rule, Selector


def selector_text(selector: Selector) -> str:
    """app=web,tier in (a,b),!legacy; "all" for the empty selector (every endpoint)."""
    parts = [f"{k}={v}" for k, v in selector.match_labels]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        parts.append({"In": f"{req.key} in ({values})", "NotIn": f"{req.key} notin ({values})",
                      "Exists": req.key, "DoesNotExist": f"!{req.key}"}[req.operator])
    return ",".join(parts) or "all"


def peer_text(peer: Peer) -> str:
    if isinstance(peer, Selector):
        return f"endpoints {selector_text(peer)}"
    assert isinstance(peer, CidrPeer)
    excepts = f" except {','.join(map(str, peer.except_))}" if peer.except_ else ""
    return f"{peer.cidr}{excepts}"


def port_text(port: PortRange) -> str:
    if port.port is None:
        return port.protocol
    end = f"-{port.end_port}" if port.end_port is not None else ""
    return f"{port.protocol}/{port.port}{end}"


def rule_text(rule: Rule, direction: str) -> str:
    """allow from endpoints app=client, 10.0.0.0/8 to TCP/80,UDP (log)"""
    way = "from" if direction == "ingress" else "to"
    peers = ", ".join(map(peer_text, rule.peers)) or "anywhere"
    ports = ",".join(map(port_text, rule.ports)) or "any protocol"
    on = "on" if direction == "ingress" else "port"
    return f"{rule.action} {way} {peers} {on} {ports}" + (" (log)" if rule.log else "")


def describe(policy: Policy) -> str:
    lines = [f"policy {policy.network}/{policy.name}  priority {policy.priority}",
             f"selects: {selector_text(policy.selector)}"]
    for direction, rules in (("ingress", policy.ingress), ("egress", policy.egress)):
        if rules is None:
            lines.append(f"{direction}: not policed")
        elif not rules:
            lines.append(f"{direction}: everything denied (no rule)")
        else:
            lines.append(f"{direction}: (first match decides; no match: drop)")
            lines += [f"  [{i}] {rule_text(r, direction)}" for i, r in enumerate(rules)]
    return "\n".join(lines)


def row(policy: Policy) -> dict[str, object]:
    """One row of `overlayctl policy list`: rule counts, "-" for a direction not policed."""
    def count(rules: tuple[Rule, ...] | None) -> str:
        return "-" if rules is None else str(len(rules))
    return {"network": policy.network, "name": policy.name, "priority": policy.priority,
            "selector": selector_text(policy.selector), "ingress": count(policy.ingress),
            "egress": count(policy.egress)}
