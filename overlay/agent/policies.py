"""The agent's side of network policy: policies from etcd, and endpoints' labels, to the
dataplane (overlay/dataplane/policy_state.py compiles and installs them).

Policies come from their own watch of /overlay/v1/policies/ (store/watch.py: snapshot, watch,
resync after compaction). Each record is untrusted: one that fails store/policies.py's
decode_policy (too large, not JSON, not a valid policy, another network or name than its key)
is logged, counted (overlay_records_rejected{kind="policy",reason="bad_policy"}) and ignored:
a valid version of that key read earlier stays in force (a corrupted update must not open
what the policy closed), none if there was none; the rest of its batch carries on. Hosts only
read policies: their etcd role may not write them (docs/security.md).

Endpoints' labels come with the endpoint records the reconciler already follows: every batch
it applies also tells the dataplane what policies know of each endpoint touched (peer_infos).
An endpoint counts for policy when it is this host's own, or when the reconciler forwards to it
(its host is live, its network known, and it holds its addresses and MAC against any rival
claim): a forged record naming another's address cannot put that address into an allowed set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from overlay.agent.verify import Endpoint
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import RemoteEndpoint
from overlay.dataplane.policy_state import PeerInfo
from overlay.policy.model import Policy
from overlay.store import records as r
from overlay.store.etcd import Store
from overlay.store.policies import POLICIES, decode_policy
from overlay.store.stream import Change
from overlay.store.watch import PrefixWatch, WatchObserver

log = logging.getLogger(__name__)


def peer_infos(updates: Mapping[str, RemoteEndpoint | None], endpoints: Mapping[str, Endpoint],
               host: str) -> dict[str, PeerInfo | None]:
    """etcd key -> what policies know of it, keyed as the dataplane keys local ports."""
    out: dict[str, PeerInfo | None] = {}
    for key, forwarded in updates.items():
        endpoint = endpoints.get(key)
        counts = endpoint is not None and (endpoint.host == host or forwarded is not None)
        out[key[len(r.ENDPOINTS):]] = PeerInfo(endpoint.network, endpoint.ips,
                                               endpoint.labels) if counts and endpoint else None
    return out


def follow(store: Store, dataplane: Dataplane, on_reject: Callable[[str, str], None],
           observer: WatchObserver) -> PrefixWatch:
    """Start following the policies; the watch returned is the caller's to stop."""
    watch = PolicyWatch(store=store, dataplane=dataplane, on_reject=on_reject,
                        observer=observer).watch
    watch.start()
    return watch


class PolicyWatch:
    def __init__(self, *, store: Store, dataplane: Dataplane,
                 on_reject: Callable[[str, str], None], observer: WatchObserver) -> None:
        self._dataplane = dataplane
        self._on_reject = on_reject
        self.watch = PrefixWatch(store=store, prefix=POLICIES, on_changes=self.on_changes,
                                 observer=observer)

    def on_changes(self, changes: list[Change]) -> None:
        updates: dict[tuple[str, str], Policy | None] = {}
        for change in changes:
            network, _, name = change.key[len(POLICIES):].partition("/")
            policy = None
            if change.value is not None:
                try:
                    policy = decode_policy(change.key, change.value)
                except Exception as exc:  # noqa: BLE001 (any shape: ignored and counted)
                    log.warning("ignoring policy record %s: %s", change.key[:200],
                                str(exc)[:200] or type(exc).__name__)
                    self._on_reject("policy", "bad_policy")
                    continue  # ignored: a valid version read earlier stays in force
            updates[(network, name)] = policy
        try:
            self._dataplane.update_policies(updates)
        except Exception:  # the dataplane marks itself for a full push; verify() repairs
            log.exception("could not apply %d policy changes", len(updates))
