"""The agent's policy watch (overlay/agent/policies.py): records decoded as untrusted input, a
bad one counted and ignored while the rest of its batch applies; endpoints' labels
count only for this host's endpoints and those the reconciler forwards to."""

from __future__ import annotations

import json
from typing import Any, cast

from overlay.agent.policies import PolicyWatch, peer_infos
from overlay.agent.verify import Endpoint
from overlay.dataplane.flows import RemoteEndpoint
from overlay.dataplane.policy_state import PeerInfo
from overlay.store import records as r
from overlay.store.policies import POLICIES
from overlay.store.stream import Change


class FakeDataplane:
    def __init__(self) -> None:
        self.updates: list[dict[tuple[str, str], object]] = []

    def update_policies(self, changes: dict[tuple[str, str], object]) -> None:
        self.updates.append(dict(changes))


def change(key: str, value: object) -> Change:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return Change(key=key, value=raw, mod_revision=1, create_revision=1)


def test_a_bad_record_is_counted_and_ignored_and_the_batch_goes_on() -> None:
    dp, rejected = FakeDataplane(), []
    watch = PolicyWatch.__new__(PolicyWatch)  # no etcd: only on_changes is exercised
    watch._dataplane, watch._on_reject = cast(Any, dp), lambda k, why: rejected.append((k, why))
    good = {"name": "db", "network": "my-net", "endpointSelector": {}}
    watch.on_changes([change(POLICIES + "my-net/db", good),
                      change(POLICIES + "my-net/bad", b"{not json"),
                      change(POLICIES + "my-net/other", {**good, "name": "db"}),  # key mismatch
                      change(POLICIES + "my-net/gone", None)])
    assert rejected == [("policy", "bad_policy"), ("policy", "bad_policy")]
    applied = dp.updates[0]
    assert applied[("my-net", "db")] is not None
    # Ignored: not applied at all, so a valid version applied earlier stays in force.
    assert ("my-net", "bad") not in applied and ("my-net", "other") not in applied
    assert applied[("my-net", "gone")] is None


def test_labels_count_for_own_endpoints_and_those_forwarded_to() -> None:
    def endpoint(host: str) -> Endpoint:
        return Endpoint(host, "my-net", 42, "0a:58:0a:00:00:02", ("10.0.0.2",), 1,
                        {"app": "db"})

    key = r.ENDPOINTS + "my-net/c/eth0"
    remote = RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",), "172.31.0.2")
    info = PeerInfo("my-net", ("10.0.0.2",), {"app": "db"})
    assert peer_infos({key: None}, {key: endpoint("me")}, "me") == {"my-net/c/eth0": info}
    assert peer_infos({key: remote}, {key: endpoint("h1")}, "me") == {"my-net/c/eth0": info}
    # Not forwarded to (its host is not live, or a rival holds its address): not a peer.
    assert peer_infos({key: None}, {key: endpoint("h1")}, "me") == {"my-net/c/eth0": None}
    assert peer_infos({key: None}, {}, "me") == {"my-net/c/eth0": None}
