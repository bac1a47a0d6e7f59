"""parse_policy is given files and etcd records: whatever the document, it returns a Policy
or raises PolicyError, and what it accepts survives the canonical encoding (hypothesis: documents
shaped like policies with any JSON in any place, and documents of any shape)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.policy.model import PolicyError, parse_policy, policy_to_dict
from overlay.store.policies import decode_policy, policy_key

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=3),
    max_leaves=12)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid shape, sometimes anything at all in its place."""
    return st.one_of(valid, valid, valid, anything)


label = st.sampled_from(["app", "tier", "example.com/x", "-bad", "", "a" * 64, "web", "v1.2"])
selector = st.fixed_dictionaries({}, optional={
    "matchLabels": maybe(st.dictionaries(label, maybe(label), max_size=3)),
    "matchExpressions": maybe(st.lists(st.fixed_dictionaries({}, optional={
        "key": maybe(label),
        "operator": maybe(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "in"])),
        "values": maybe(st.lists(label, max_size=3))}), max_size=2))})
cidr = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.0.0.1/8", "fd00::/64", "0.0.0.0/0",
                        "10.0.0.0/33", "nonsense"])
peer = st.one_of(
    st.fixed_dictionaries({"endpointSelector": maybe(selector)}),
    st.fixed_dictionaries({"ipBlock": maybe(st.fixed_dictionaries(
        {"cidr": maybe(cidr)}, optional={"except": maybe(st.lists(cidr, max_size=2))}))}),
    anything)
port = st.fixed_dictionaries({}, optional={
    "protocol": maybe(st.sampled_from(["TCP", "UDP", "SCTP", "ICMP"])),
    "port": maybe(st.integers(-2, 70000)), "endPort": maybe(st.integers(-2, 70000))})


def rule(peers_key: str) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional={
        peers_key: maybe(st.lists(peer, max_size=3)), "ports": maybe(st.lists(port, max_size=3)),
        "action": maybe(st.sampled_from(["allow", "Drop", "reject", "deny"])),
        "log": maybe(st.booleans())})


document = st.fixed_dictionaries({"name": maybe(st.sampled_from(["web", "db-1", "Web", "a/b"])),
                                  "endpointSelector": maybe(selector)}, optional={
    "priority": maybe(st.integers(-1, 70000)),
    "policyTypes": maybe(st.lists(st.sampled_from(["Ingress", "Egress", "ingress"]),
                                  max_size=2)),
    "ingress": maybe(st.lists(rule("from"), max_size=3)),
    "egress": maybe(st.lists(rule("to"), max_size=3))})


def check(doc: object) -> None:
    try:
        policy = parse_policy(doc, network="n")
    except PolicyError as err:
        assert str(err) and len(str(err)) < 400  # says why, and quotes only a bit of the input
        return
    encoded = json.loads(json.dumps(policy_to_dict(policy)))
    assert parse_policy(encoded) == policy
    assert decode_policy(policy_key("n", policy.name), json.dumps(encoded).encode()) == policy


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(document)
def test_documents_shaped_like_policies(doc: dict[str, Any]) -> None:
    check(doc)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(anything)
def test_documents_of_any_shape(doc: object) -> None:
    check(doc)


def test_pathological_inputs_are_refused_with_a_short_message() -> None:
    deep: object = {}
    for _ in range(5000):
        deep = {"matchLabels": deep}
    for doc in ({"name": "p", "network": "n", "endpointSelector": deep},
                {"name": "x" * 100_000, "network": "n", "endpointSelector": {}},
                {"name": "p", "network": "n", "endpointSelector": {}, "priority": 10 ** 5000},
                {"name": "p", "network": "n", "endpointSelector": {}, "kind": [[[]]] * 10_000}):
        try:
            parse_policy(doc)
        except PolicyError as err:
            assert len(str(err)) < 400, str(err)[:500]
        else:
            raise AssertionError("accepted")
