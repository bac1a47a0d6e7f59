"""The reference evaluator (overlay/policy/evaluate.py): the semantics docs/policy.md states,
one case each, and properties that any order of the inputs gives the same verdict."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.policy.evaluate import Verdict, verdict
from overlay.policy.model import Policy, parse_policy

TCP, UDP, ICMP = 6, 17, 1
WEB = {"app": "web"}
CLIENT = {"app": "client"}


def policy(name: str, **doc: Any) -> Policy:
    return parse_policy({"name": name, "network": "blue", "endpointSelector":
                         {"matchLabels": {"app": "web"}}, **doc})


def ingress(policies: list[Policy], *, peer: dict[str, str] | None = CLIENT, ip: str = "10.0.0.2",
            protocol: int = TCP, port: int | None = 80, subject: dict[str, str] = WEB) -> Verdict:
    return verdict(policies, direction="ingress", subject=subject, peer_labels=peer,
                   peer_ip=ipaddress.ip_address(ip), protocol=protocol, port=port)


ALLOW_CLIENT_80 = policy("allow-client", ingress=[
    {"from": [{"endpointSelector": {"matchLabels": {"app": "client"}}}],
     "ports": [{"port": 80}]}])


def test_an_endpoint_no_policy_selects_allows_everything() -> None:
    assert ingress([]) == Verdict("allow", None, None)
    assert ingress([ALLOW_CLIENT_80], subject={"app": "db"}, port=22) == Verdict("allow", None, None)


def test_a_selected_endpoint_allows_only_what_a_rule_allows() -> None:
    assert ingress([ALLOW_CLIENT_80]) == Verdict("allow", "allow-client", 0)
    assert ingress([ALLOW_CLIENT_80], port=81) == Verdict("drop", None, None)
    assert ingress([ALLOW_CLIENT_80], protocol=UDP) == Verdict("drop", None, None)
    assert ingress([ALLOW_CLIENT_80], peer={"app": "other"}) == Verdict("drop", None, None)


def test_icmp_matches_only_rules_without_ports() -> None:
    assert ingress([ALLOW_CLIENT_80], protocol=ICMP, port=None).action == "drop"
    any_port = policy("any", ingress=[{"from": [{"endpointSelector": {}}]}])
    assert ingress([any_port], protocol=ICMP, port=None) == Verdict("allow", "any", 0)


def test_a_policy_that_does_not_police_a_direction_leaves_it_open() -> None:
    egress_only = policy("out", policyTypes=["Egress"], egress=[])
    assert ingress([egress_only]) == Verdict("allow", None, None)
    assert verdict([egress_only], direction="egress", subject=WEB, peer_labels=None,
                   peer_ip=ipaddress.ip_address("8.8.8.8"), protocol=UDP, port=53).action == "drop"


def test_selector_peers_never_match_outside_traffic_cidr_peers_do() -> None:
    p = policy("mixed", ingress=[{"from": [{"endpointSelector": {}}]},
                                 {"from": [{"ipBlock": {"cidr": "192.168.0.0/16",
                                                        "except": ["192.168.1.0/24"]}}]}])
    assert ingress([p], peer=None, ip="10.0.0.9").action == "drop"
    assert ingress([p], peer=None, ip="192.168.2.1") == Verdict("allow", "mixed", 1)
    assert ingress([p], peer=None, ip="192.168.1.7").action == "drop"  # the except
    assert ingress([p], peer=None, ip="fd00::1").action == "drop"      # other family
    assert ingress([p], peer={}, ip="10.0.0.9") == Verdict("allow", "mixed", 0)


def test_port_ranges_and_whole_protocols() -> None:
    p = policy("ranges", ingress=[{"ports": [{"port": 8000, "endPort": 8080},
                                             {"protocol": "UDP"}]}])
    assert ingress([p], port=8000).action == "allow"
    assert ingress([p], port=8080).action == "allow"
    assert ingress([p], port=8081).action == "drop"
    assert ingress([p], protocol=UDP, port=1).action == "allow"
    assert ingress([p], protocol=132, port=8000).action == "drop"


def test_lower_priority_first_then_drop_before_allow_then_name_then_index() -> None:
    allow = policy("a-allow", priority=10, ingress=[{"ports": [{"port": 80}]}])
    drop = policy("z-drop", priority=10, ingress=[{"ports": [{"port": 80}], "action": "drop"}])
    assert ingress([allow, drop]) == Verdict("drop", "z-drop", 0)     # same priority: drop wins
    early = policy("early", priority=5, ingress=[{"ports": [{"port": 80}]}])
    assert ingress([allow, drop, early]) == Verdict("allow", "early", 0)
    reject = policy("b", priority=10, ingress=[{"action": "reject", "ports": [{"port": 80}]}])
    assert ingress([drop, reject]) == Verdict("reject", "b", 0)        # same rank: by name
    two = policy("two", ingress=[{"ports": [{"port": 81}]}, {"ports": [{"port": 80}]},
                                 {"ports": [{"port": 80}], "log": True}])
    assert ingress([two]) == Verdict("allow", "two", 1)                # first matching index


def test_only_the_subjects_network_applies_when_asked() -> None:
    red = parse_policy({"name": "red", "network": "red", "endpointSelector": {}, "ingress": []})
    assert verdict([red], direction="ingress", subject=WEB, peer_labels=CLIENT,
                   peer_ip=ipaddress.ip_address("10.0.0.2"), protocol=TCP, port=80,
                   network="blue") == Verdict("allow", None, None)


_POOL = [
    policy("p1", priority=1, ingress=[{"ports": [{"port": 22}], "action": "drop"}]),
    policy("p2", ingress=[{"from": [{"endpointSelector": {"matchLabels": {"app": "client"}}}]}]),
    policy("p3", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "action": "reject",
                           "ports": [{"port": 80, "endPort": 90}]}]),
    policy("p4", priority=1000, ingress=[{"ports": [{"protocol": "UDP"}]}]),
    parse_policy({"name": "p5", "network": "blue", "endpointSelector": {"matchExpressions": [
        {"key": "app", "operator": "NotIn", "values": ["web"]}]}, "ingress": []}),
]


@settings(max_examples=200, deadline=None)
@given(st.permutations(_POOL), st.sampled_from([None, CLIENT, {"app": "x"}]),
       st.sampled_from(["10.1.2.3", "172.16.0.1"]), st.sampled_from([TCP, UDP, ICMP]),
       st.sampled_from([22, 80, 85, 443]))
def test_the_order_policies_come_in_does_not_matter(order: list[Policy], peer: dict[str, str] | None,
                                                    ip: str, protocol: int, port: int) -> None:
    args: dict[str, Any] = {"peer": peer, "ip": ip, "protocol": protocol,
                            "port": None if protocol == ICMP else port}
    assert ingress(order, **args) == ingress(_POOL, **args)
