"""The policy document: what an operator writes, what etcd stores, what agents enforce.

Shaped like a Kubernetes NetworkPolicy so that users read it without a manual, with Antrea's
additions for cluster policies: a `priority`, an `action` per rule (allow, drop, reject) and a
`log` flag. parse_policy() is the one decoder and policy_to_dict() the one encoder of the
JSON stored under /overlay/v1/policies/<network>/<name>; parse_policy(policy_to_dict(p)) == p.

Everything here is untrusted input (an operator's file, another writer's etcd record), so
every refusal is a PolicyError whose text starts with the field it is about
("ingress[0].ports[1].port: must be 1-65535"), and the parsed value is canonical: labels and
selector values sorted, so two documents that mean the same compare equal.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal, cast

from overlay.policy.labels import Labels, key_problem, short, value_problem

__all__ = ["Action", "CidrPeer", "Labels", "Operator", "Peer", "Policy", "PolicyError",
           "PortRange", "Protocol", "Requirement", "Rule", "Selector", "parse_policy",
           "policy_to_dict"]

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
Protocol = Literal["TCP", "UDP", "SCTP"]
Action = Literal["allow", "drop", "reject"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
ACTIONS: tuple[Action, ...] = ("allow", "drop", "reject")
PROTOCOL_NUMBERS: dict[Protocol, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
DEFAULT_PRIORITY = 1000
MAX_PRIORITY = 65535
# Bounds on one document: an etcd record is untrusted, and an agent compiles every policy.
MAX_RULES, MAX_ITEMS = 256, 256
# The policy's name is the last part of its etcd key: no '/', nothing that reads as a path.
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?")
# The CNI spec's pattern for network names (overlay/cni/netconf.py checks netconfs with it).
_NETWORK_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


class PolicyError(ValueError):
    """A refused document; str() begins with the field: "ingress[0].ports[1].port: ..."."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        # As in Kubernetes, NotIn also matches an endpoint without the key.
        return inside if self.operator == "In" else not inside


@dataclass(frozen=True)
class Selector:
    """A Kubernetes LabelSelector: every pair and every expression must hold; empty = all."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))


@dataclass(frozen=True)
class CidrPeer:
    cidr: IPv4Network | IPv6Network
    except_: tuple[IPv4Network | IPv6Network, ...] = ()


Peer = Selector | CidrPeer  # a selector peer = endpoints of the same network it selects


@dataclass(frozen=True)
class PortRange:
    protocol: Protocol = "TCP"
    port: int | None = None       # None: every port of the protocol
    end_port: int | None = None   # None: just `port`


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()        # empty = any peer
    ports: tuple[PortRange, ...] = ()   # empty = any protocol and port
    action: Action = "allow"
    log: bool = False


@dataclass(frozen=True)
class Policy:
    network: str
    name: str
    selector: Selector
    ingress: tuple[Rule, ...] | None   # None: the policy does not police ingress
    egress: tuple[Rule, ...] | None
    priority: int = DEFAULT_PRIORITY   # 0..65535, lower is evaluated first


# -- decoding ----------------------------------------------------------------------------------

def _mapping(value: object, field: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise PolicyError(field, f"must be an object, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            where = f"{field}.{key}" if field else str(key)
            raise PolicyError(where, f"unknown field; expected one of {', '.join(allowed)}")
    return cast(Mapping[str, object], value)


def _list(value: object, field: str) -> list[object]:
    if not isinstance(value, list | tuple):
        raise PolicyError(field, f"must be a list, got {_kind(value)}")
    if len(value) > MAX_ITEMS:
        raise PolicyError(field, f"at most {MAX_ITEMS} entries, got {len(value)}")
    return list(value)


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(field, f"must be an integer {low}-{high}, got {_kind(value)}")
    if not low <= value <= high:
        raise PolicyError(field, f"must be {low}-{high}, got {short(value)}")
    return value


def _kind(value: object) -> str:
    return f"{type(value).__name__} {short(value, 40)}"


def _selector(value: object, field: str) -> Selector:
    doc = _mapping(value, field, ("matchLabels", "matchExpressions"))
    pairs = doc.get("matchLabels", {})
    if not isinstance(pairs, Mapping):
        raise PolicyError(f"{field}.matchLabels", f"must be an object of key: value, "
                                                  f"got {_kind(pairs)}")
    labels = []
    for key, val in pairs.items():
        problem = key_problem(key) or value_problem(val)
        if problem:
            raise PolicyError(f"{field}.matchLabels.{key}", problem)
        labels.append((cast(str, key), cast(str, val)))
    exprs = _list(doc.get("matchExpressions", []), f"{field}.matchExpressions")
    reqs = tuple(_requirement(e, f"{field}.matchExpressions[{i}]") for i, e in enumerate(exprs))
    return Selector(tuple(sorted(labels)), reqs)


def _requirement(value: object, field: str) -> Requirement:
    doc = _mapping(value, field, ("key", "operator", "values"))
    key = doc.get("key")
    problem = key_problem(key)
    if problem:
        raise PolicyError(f"{field}.key", problem)
    operator = doc.get("operator")
    if operator not in OPERATORS:
        raise PolicyError(f"{field}.operator", f"must be one of {', '.join(OPERATORS)}, "
                                               f"got {short(operator)}")
    values = _list(doc.get("values", []), f"{field}.values")
    for i, val in enumerate(values):
        problem = value_problem(val)
        if problem:
            raise PolicyError(f"{field}.values[{i}]", problem)
    if operator in ("In", "NotIn") and not values:
        raise PolicyError(f"{field}.values", f"{operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise PolicyError(f"{field}.values", f"{operator} takes no values")
    return Requirement(cast(str, key), operator,
                       tuple(sorted(set(cast(list[str], values)))))


def _network(value: object, field: str) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise PolicyError(field, f"must be a CIDR such as 10.0.0.0/24, got {_kind(value)}")
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise PolicyError(field, f"{short(value)} is not a CIDR with its host bits zero "
                                 f"({str(exc)[:80]})") \
            from None


def _peer(value: object, field: str) -> Peer:
    if isinstance(value, Mapping) and "namespaceSelector" in value:
        raise PolicyError(f"{field}.namespaceSelector", "not supported; select the label "
                          "io.kubernetes.pod.namespace in an endpointSelector instead")
    doc = _mapping(value, field, ("endpointSelector", "podSelector", "ipBlock"))
    if len(doc) != 1:
        raise PolicyError(field, "must have exactly one of endpointSelector, ipBlock")
    if "ipBlock" not in doc:
        key = "endpointSelector" if "endpointSelector" in doc else "podSelector"
        return _selector(doc[key], f"{field}.{key}")
    block = _mapping(doc["ipBlock"], f"{field}.ipBlock", ("cidr", "except"))
    if "cidr" not in block:
        raise PolicyError(f"{field}.ipBlock.cidr", "required")
    cidr = _network(block["cidr"], f"{field}.ipBlock.cidr")
    excepts = []
    for i, item in enumerate(_list(block.get("except", []), f"{field}.ipBlock.except")):
        where = f"{field}.ipBlock.except[{i}]"
        net = _network(item, where)
        if net.version != cidr.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
            raise PolicyError(where, f"{net} is not inside the cidr {cidr}")
        excepts.append(net)
    return CidrPeer(cidr, tuple(sorted(set(excepts), key=_net_order)))


def _net_order(net: IPv4Network | IPv6Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def _port_range(value: object, field: str) -> PortRange:
    doc = _mapping(value, field, ("protocol", "port", "endPort"))
    protocol = doc.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{field}.protocol", f"must be one of {', '.join(PROTOCOLS)}, "
                                               f"got {short(protocol)} (ICMP: a rule without ports)")
    port = doc.get("port")
    if isinstance(port, str):
        raise PolicyError(f"{field}.port", f"named ports are not supported; give a number, "
                                           f"got {short(port)}")
    port = None if port is None else _int(port, f"{field}.port", 1, 65535)
    end = doc.get("endPort")
    end = None if end is None else _int(end, f"{field}.endPort", 1, 65535)
    if end is not None and port is None:
        raise PolicyError(f"{field}.endPort", "needs a port to start the range")
    if end is not None and port is not None and end < port:
        raise PolicyError(f"{field}.endPort", f"must be >= port {port}, got {end}")
    return PortRange(protocol, port, None if end == port else end)


def _rule(value: object, field: str, peers_key: str) -> Rule:
    doc = _mapping(value, field, (peers_key, "ports", "action", "log"))
    peers = _list(doc.get(peers_key, []), f"{field}.{peers_key}")
    ports = _list(doc.get("ports", []), f"{field}.ports")
    action = doc.get("action", "allow")
    if not isinstance(action, str) or action.lower() not in ACTIONS:
        raise PolicyError(f"{field}.action", f"must be one of {', '.join(ACTIONS)}, got {short(action)}")
    log = doc.get("log", False)
    if not isinstance(log, bool):
        raise PolicyError(f"{field}.log", f"must be true or false, got {_kind(log)}")
    return Rule(tuple(_peer(p, f"{field}.{peers_key}[{i}]") for i, p in enumerate(peers)),
                tuple(_port_range(p, f"{field}.ports[{i}]") for i, p in enumerate(ports)),
                cast(Action, action.lower()), log)


def _rules(doc: Mapping[str, object], direction: str, policed: bool) -> tuple[Rule, ...] | None:
    given = doc.get(direction)
    if not policed:
        if given is not None:
            raise PolicyError(direction, f"rules given but policyTypes does not name "
                                         f"{direction.capitalize()}")
        return None
    rules = _list([] if given is None else given, direction)
    if len(rules) > MAX_RULES:
        raise PolicyError(direction, f"at most {MAX_RULES} rules, got {len(rules)}")
    peers_key = "from" if direction == "ingress" else "to"
    return tuple(_rule(r, f"{direction}[{i}]", peers_key) for i, r in enumerate(rules))


def _policy_types(doc: Mapping[str, object]) -> tuple[bool, bool]:
    """(ingress, egress) policed; the defaults are Kubernetes': Ingress, and Egress if given."""
    if "policyTypes" not in doc:
        return True, doc.get("egress") is not None
    types = _list(doc["policyTypes"], "policyTypes")
    for i, kind in enumerate(types):
        if kind not in ("Ingress", "Egress"):
            raise PolicyError(f"policyTypes[{i}]", f"must be Ingress or Egress, got {short(kind)}")
    if not types:
        raise PolicyError("policyTypes", "must name Ingress, Egress or both")
    return "Ingress" in types, "Egress" in types


_BODY = ("endpointSelector", "podSelector", "policyTypes", "ingress", "egress", "priority")
_TOP = ("name", "network", "kind", "apiVersion", "metadata", "spec") + _BODY


def _names(doc: Mapping[str, object], network: str | None) -> tuple[str, str]:
    meta = doc.get("metadata", {})
    if not isinstance(meta, Mapping):
        raise PolicyError("metadata", f"must be an object, got {_kind(meta)}")
    name = doc.get("name", meta.get("name"))
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise PolicyError("name", f"must be 1-253 characters of a-z 0-9 . - beginning and "
                                  f"ending with a letter or digit, got {short(name)}")
    net = doc.get("network", meta.get("network"))
    if net is None:
        net = network
    elif network is not None and net != network:
        raise PolicyError("network", f"the document names {short(net)} but {short(network)} was asked for")
    if net is None:
        raise PolicyError("network", "required: name the network in the document or with "
                                     "--network")
    if not isinstance(net, str) or not _NETWORK_RE.fullmatch(net):
        raise PolicyError("network", f"must be a network name ({_NETWORK_RE.pattern}), "
                                     f"got {short(net)}")
    return net, name


def parse_policy(doc: object, *, network: str | None = None) -> Policy:
    """A decoded JSON/YAML document -> Policy, or PolicyError naming the field refused (and
    no other exception, whatever the document: it comes from a file or from etcd).

    `network` is used when the document names none (overlayctl's --network); a document that
    names another one is refused rather than silently moved.
    """
    try:
        return _parse(doc, network)
    except RecursionError:  # a document nested deeper than the checks recurse
        raise PolicyError("", "nested too deeply") from None


def _parse(doc: object, network: str | None) -> Policy:
    top = _mapping(doc, "", _TOP)
    kind = top.get("kind", "NetworkPolicy")
    if kind != "NetworkPolicy":
        raise PolicyError("kind", f"must be NetworkPolicy, got {short(kind)}")
    body = _mapping(top["spec"], "spec", _BODY) if "spec" in top else top
    net, name = _names(top, network)
    key = "endpointSelector" if "endpointSelector" in body else "podSelector"
    if key not in body:
        raise PolicyError("endpointSelector", "required; {} selects every endpoint of the "
                                              "network")
    selector = _selector(body[key], key)
    priority = _int(body.get("priority", DEFAULT_PRIORITY), "priority", 0, MAX_PRIORITY)
    ingress, egress = _policy_types(body)
    return Policy(net, name, selector, _rules(body, "ingress", ingress),
                  _rules(body, "egress", egress), priority)


# -- encoding ----------------------------------------------------------------------------------

def _selector_dict(selector: Selector) -> dict[str, object]:
    out: dict[str, object] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values
                                                      else {})}
            for r in selector.match_expressions]
    return out


def _peer_dict(peer: Peer) -> dict[str, object]:
    if isinstance(peer, Selector):
        return {"endpointSelector": _selector_dict(peer)}
    block: dict[str, object] = {"cidr": str(peer.cidr)}
    if peer.except_:
        block["except"] = [str(n) for n in peer.except_]
    return {"ipBlock": block}


def _port_dict(port: PortRange) -> dict[str, object]:
    out: dict[str, object] = {"protocol": port.protocol}
    if port.port is not None:
        out["port"] = port.port
    if port.end_port is not None:
        out["endPort"] = port.end_port
    return out


def _rule_dict(rule: Rule, peers_key: str) -> dict[str, object]:
    return {peers_key: [_peer_dict(p) for p in rule.peers],
            "ports": [_port_dict(p) for p in rule.ports], "action": rule.action, "log": rule.log}


def policy_to_dict(policy: Policy) -> dict[str, object]:
    """The canonical JSON-able form, as stored in etcd and printed by `overlayctl policy show`."""
    types = [t for t, rules in (("Ingress", policy.ingress), ("Egress", policy.egress))
             if rules is not None]
    out: dict[str, object] = {"name": policy.name, "network": policy.network,
                              "priority": policy.priority,
                              "endpointSelector": _selector_dict(policy.selector),
                              "policyTypes": types}
    if policy.ingress is not None:
        out["ingress"] = [_rule_dict(r, "from") for r in policy.ingress]
    if policy.egress is not None:
        out["egress"] = [_rule_dict(r, "to") for r in policy.egress]
    return out
