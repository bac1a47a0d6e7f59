"""The policy document (overlay/policy/model.py): parsing, refusals naming the field, the
canonical encoding and its round trip, selectors, and the label rules (overlay/policy/labels.py)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.policy import labels
from overlay.policy.model import (
    CidrPeer,
    Policy,
    PolicyError,
    PortRange,
    Requirement,
    Rule,
    Selector,
    parse_policy,
    policy_to_dict,
)

WEB = {
    "name": "web", "network": "blue", "priority": 10,
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "client"}}},
                          {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                 "ports": [{"protocol": "TCP", "port": 80}, {"port": 8000, "endPort": 8080}],
                 "log": True}],
}


def test_a_kubernetes_shaped_document_parses_to_the_model() -> None:
    policy = parse_policy(WEB)
    assert policy == Policy(
        network="blue", name="web", priority=10,
        selector=Selector(match_labels=(("app", "web"),)),
        ingress=(Rule(peers=(Selector(match_labels=(("app", "client"),)),
                             CidrPeer(ipaddress.ip_network("192.168.0.0/16"),
                                      (ipaddress.ip_network("192.168.1.0/24"),))),
                      ports=(PortRange("TCP", 80), PortRange("TCP", 8000, 8080)),
                      action="allow", log=True),),
        egress=None)


def test_kubernetes_style_metadata_and_spec_are_accepted() -> None:
    doc = {"kind": "NetworkPolicy", "metadata": {"name": "web"},
           "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}]}}
    policy = parse_policy(doc, network="blue")
    assert (policy.network, policy.name, policy.selector) == ("blue", "web", Selector())
    assert policy.ingress is None
    assert policy.egress == (Rule(peers=(CidrPeer(ipaddress.ip_network("10.9.0.0/16")),)),)


def test_policy_types_default_as_in_kubernetes() -> None:
    base = {"name": "p", "network": "n", "endpointSelector": {}}
    only_ingress = parse_policy(base)
    assert only_ingress.ingress == () and only_ingress.egress is None  # selects: deny all in
    both = parse_policy({**base, "egress": []})
    assert both.ingress == () and both.egress == ()
    egress_only = parse_policy({**base, "policyTypes": ["Egress"]})
    assert egress_only.ingress is None and egress_only.egress == ()


def test_actions_are_case_insensitive_and_canonical_lower_case() -> None:
    doc = {"name": "p", "network": "n", "endpointSelector": {},
           "ingress": [{"action": "Drop"}, {"action": "reject"}]}
    assert [r.action for r in parse_policy(doc).ingress or ()] == ["drop", "reject"]


@pytest.mark.parametrize(("change", "message"), [
    ({"priority": 70000}, "priority: must be 0-65535, got 70000"),
    ({"priority": True}, "priority: must be an integer"),
    ({"name": "Web/x"}, "name: must be 1-253 characters"),
    ({"network": "bad name"}, "network: must be a network name"),
    ({"endpointSelector": []}, "endpointSelector: must be an object"),
    ({"endpointSelector": {"matchLabels": {"app": "we b"}}},
     "endpointSelector.matchLabels.app: label value 'we b'"),
    ({"endpointSelector": {"matchLabels": {"-app": "x"}}}, "endpointSelector.matchLabels.-app"),
    ({"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "endpointSelector.matchExpressions[0].values: In needs at least one value"),
    ({"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
     "endpointSelector.matchExpressions[0].operator: must be one of In, NotIn"),
    ({"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                  "values": ["x"]}]}},
     "endpointSelector.matchExpressions[0].values: Exists takes no values"),
    ({"ingress": [{"ports": [{"port": 80}, {"port": 0}]}]},
     "ingress[0].ports[1].port: must be 1-65535, got 0"),
    ({"ingress": [{"ports": [{"port": "http"}]}]}, "ingress[0].ports[0].port: named ports"),
    ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "ingress[0].ports[0].protocol: must be"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "ingress[0].ports[0].endPort: must be >= port 90, got 80"),
    ({"ingress": [{"ports": [{"endPort": 80}]}]}, "ingress[0].ports[0].endPort: needs a port"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/24"}}]}]},
     "ingress[0].from[0].ipBlock.cidr: '10.0.0.1/24' is not a CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.1.0.0/24"]}}]}]},
     "ingress[0].from[0].ipBlock.except[0]: 10.1.0.0/24 is not inside the cidr 10.0.0.0/24"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
     "ingress[0].from[0].ipBlock.except[0]: fd00::/64 is not inside"),
    ({"ingress": [{"from": [{}]}]}, "ingress[0].from[0]: must have exactly one of"),
    ({"ingress": [{"from": [{"namespaceSelector": {}}]}]},
     "ingress[0].from[0].namespaceSelector: not supported"),
    ({"ingress": [{"to": []}]}, "ingress[0].to: unknown field"),
    ({"ingress": [{"action": "deny"}]}, "ingress[0].action: must be one of allow, drop, reject"),
    ({"ingress": [{"log": "yes"}]}, "ingress[0].log: must be true or false"),
    ({"egress": [{"to": [{"ipBlock": {}}]}]}, "egress[0].to[0].ipBlock.cidr: required"),
    ({"policyTypes": ["Ingress"], "egress": []}, "egress: rules given but policyTypes"),
    ({"policyTypes": ["ingress"]}, "policyTypes[0]: must be Ingress or Egress"),
    ({"policyTypes": []}, "policyTypes: must name Ingress, Egress or both"),
    ({"selector": {}}, "selector: unknown field"),
    ({"kind": "Pod"}, "kind: must be NetworkPolicy"),
    ({"ingress": {"from": []}}, "ingress: must be a list"),
])
def test_refusals_name_the_field(change: dict[str, Any], message: str) -> None:
    doc = {"name": "p", "network": "n", "endpointSelector": {}, **change}
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc)
    assert str(caught.value).startswith(message), str(caught.value)


def test_the_network_comes_from_the_document_or_the_caller_and_they_must_agree() -> None:
    doc = {"name": "p", "endpointSelector": {}}
    with pytest.raises(PolicyError, match="^network: required"):
        parse_policy(doc)
    assert parse_policy(doc, network="blue").network == "blue"
    with pytest.raises(PolicyError, match="^network: the document names 'red' but 'blue'"):
        parse_policy({**doc, "network": "red"}, network="blue")
    assert parse_policy({**doc, "network": "blue"}, network="blue").network == "blue"


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(PolicyError, match="must be an object, got list"):
        parse_policy([1, 2])


def test_the_encoding_is_canonical_json_and_parses_back() -> None:
    policy = parse_policy({**WEB, "egress": [{"to": [], "ports": [{"protocol": "UDP",
                                                                 "port": 53, "endPort": 53}],
                                              "action": "REJECT"}]})
    encoded = policy_to_dict(policy)
    assert json.loads(json.dumps(encoded)) == encoded
    assert encoded["policyTypes"] == ["Ingress", "Egress"]
    assert encoded["egress"] == [{"to": [], "ports": [{"protocol": "UDP", "port": 53}],
                                  "action": "reject", "log": False}]
    assert parse_policy(encoded) == policy


def test_selector_semantics_follow_kubernetes() -> None:
    sel = Selector(match_labels=(("app", "web"),),
                   match_expressions=(Requirement("tier", "In", ("a", "b")),
                                      Requirement("env", "NotIn", ("prod",)),
                                      Requirement("team", "Exists"),
                                      Requirement("legacy", "DoesNotExist")))
    good = {"app": "web", "tier": "a", "team": "x"}
    assert sel.matches(good)
    assert sel.matches({**good, "env": "dev"})       # NotIn: another value
    assert not sel.matches({**good, "env": "prod"})
    assert not sel.matches({**good, "app": "db"})
    assert not sel.matches({**good, "tier": "c"})
    assert not sel.matches({k: v for k, v in good.items() if k != "tier"})  # In needs the key
    assert not sel.matches({k: v for k, v in good.items() if k != "team"})
    assert not sel.matches({**good, "legacy": ""})
    assert Selector().matches({}) and Selector().matches({"any": "thing"})


@pytest.mark.parametrize("key", ["app", "example.com/app", "a.b-c/x_y.z", "A9", "x" * 63])
def test_valid_label_keys(key: str) -> None:
    assert labels.key_problem(key) is None


@pytest.mark.parametrize("key", ["", "-a", "a-", "x" * 64, "Example.com/app", "/app", "a/",
                                 "a b", "é", "a/b/c", 5])
def test_invalid_label_keys(key: object) -> None:
    assert labels.key_problem(key) is not None


def test_label_values_and_sets() -> None:
    assert labels.value_problem("") is None and labels.value_problem("v1.2_3-x") is None
    assert labels.value_problem("a\n") is not None and labels.value_problem(1) is not None
    assert labels.labels_problem({"app": "web", labels.NAMESPACE_LABEL: "default"}) is None
    assert labels.labels_problem({f"k{i}": "" for i in range(65)}) == "at most 64 labels, got 65"
    assert labels.labels_problem(["app"]) is not None


# -- property: any policy the model can hold survives the encoding --------------------------------

_names = st.from_regex(r"[a-z0-9]([a-z0-9.\-]{0,10}[a-z0-9])?", fullmatch=True)
_values = st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9_.\-]{0,8}[A-Za-z0-9])?)?", fullmatch=True)
_keys = st.one_of(_names.filter(lambda s: "." not in s and "-" not in s[:1]),
                  st.builds(lambda p, n: f"{p}.io/{n}", st.from_regex(r"[a-z]{1,8}",
                                                                      fullmatch=True), _names))
_requirement = st.one_of(
    st.builds(Requirement, _keys, st.sampled_from(["In", "NotIn"]),
              st.lists(_values, min_size=1, max_size=3, unique=True).map(lambda v: tuple(
                  sorted(v)))),
    st.builds(Requirement, _keys, st.sampled_from(["Exists", "DoesNotExist"])))
_selector = st.builds(
    Selector,
    st.dictionaries(_keys, _values, max_size=3).map(lambda d: tuple(sorted(d.items()))),
    st.lists(_requirement, max_size=3).map(tuple))
_v4 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                st.integers(0, 2**32 - 1), st.integers(8, 32))


@st.composite
def _cidr_peer(draw: st.DrawFn) -> CidrPeer:
    cidr = draw(_v4)
    subs = [n for n in (cidr.subnets(new_prefix=min(cidr.prefixlen + 2, 32)))][:4]
    chosen = draw(st.lists(st.sampled_from(subs), max_size=2, unique=True)) \
        if cidr.prefixlen < 32 else []
    return CidrPeer(cidr, tuple(sorted(chosen, key=lambda n: int(n.network_address))))


@st.composite
def _port_range(draw: st.DrawFn) -> PortRange:
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    port = draw(st.none() | st.integers(1, 65535))
    if port is None:
        return PortRange(protocol)
    end = draw(st.none() | st.integers(port + 1, 65536))
    return PortRange(protocol, port, end if end is not None and end <= 65535 else None)


_rule = st.builds(Rule, st.lists(st.one_of(_selector, _cidr_peer()), max_size=3).map(tuple),
                  st.lists(_port_range(), max_size=3).map(tuple),
                  st.sampled_from(["allow", "drop", "reject"]), st.booleans())
_rules = st.none() | st.lists(_rule, max_size=3).map(tuple)
_policy = st.builds(Policy, _names, _names, _selector, _rules, _rules,
                    st.integers(0, 65535)).filter(
    lambda p: p.ingress is not None or p.egress is not None)


@settings(max_examples=300, deadline=None)
@given(_policy)
def test_round_trip_through_json(policy: Policy) -> None:
    assert parse_policy(json.loads(json.dumps(policy_to_dict(policy)))) == policy


def test_the_example_of_docs_policy_md_is_a_valid_policy() -> None:
    import pathlib

    import yaml

    text = (pathlib.Path(__file__).parents[2] / "docs" / "policy.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(yaml.safe_load(block))
    assert (policy.network, policy.name, policy.priority) == ("my-net", "web", 100)
    assert policy.ingress is not None and policy.egress is not None
    assert policy.ingress[0].ports[2] == PortRange("UDP") and policy.ingress[0].log
