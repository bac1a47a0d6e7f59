"""Policy records from etcd are untrusted (overlay/store/policies.py decode_policy): size,
JSON, the model's checks, and the key agreeing with the body."""

from __future__ import annotations

import json

import pytest

from overlay.policy.model import PolicyError, parse_policy
from overlay.store import policies as sp

DOC = {"name": "web", "network": "blue", "endpointSelector": {"matchLabels": {"app": "web"}},
       "ingress": [{"ports": [{"port": 80}]}]}
KEY = "/overlay/v1/policies/blue/web"


def test_keys_and_a_good_record() -> None:
    assert sp.policy_key("blue", "web") == KEY and sp.policy_prefix("blue") == sp.POLICIES + "blue/"
    policy = parse_policy(DOC)
    value = sp.encode_policy(policy).encode()
    assert sp.decode_policy(KEY, value) == policy
    assert json.loads(value)["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize(("key", "value", "words"), [
    ("/overlay/v1/policies/red/web", json.dumps(DOC).encode(), "name: the record says blue/web"),
    ("/overlay/v1/policies/blue/other", json.dumps(DOC).encode(), "the record says blue/web"),
    (KEY, b"{" * 10, "not JSON"),
    (KEY, b"\xff\xfe", "not JSON"),
    # 200 KB of nesting: under the size bound, over the JSON parser's depth
    (KEY, b"[" * 100_000 + b"]" * 100_000, "not JSON (RecursionError)"),
    (KEY, json.dumps({**DOC, "pad": "x" * 300_000}).encode(), "bytes (at most 262144)"),
    (KEY, json.dumps({**DOC, "priority": "high"}).encode(), "priority: must be an integer"),
    (KEY, b"[]", "must be an object, got list"),
])
def test_a_bad_record_is_a_policy_error(key: str, value: bytes, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        sp.decode_policy(key, value)
    assert words in str(caught.value)
