"""From the control plane's state in etcd to the remote half of the flow table.

Level-triggered: it is handed the whole mirrored state (hosts, networks, endpoints) on every
change and derives the complete list of remote endpoints from it. An endpoint counts only while
its host is alive (its leased host key exists), so traffic to a lost host stops when the
lease expires, and resumes by itself when the host registers again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import RemoteEndpoint
from overlay.store import records as r

log = logging.getLogger(__name__)


def live_vteps(state: dict[str, bytes]) -> dict[str, str]:
    """host -> VTEP address, for every host whose leased record exists."""
    vteps: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith(r.HOSTS):
            try:
                vteps[key[len(r.HOSTS):]] = r.HostRecord.from_json(value).vtep
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring malformed host record %s", key)
    return vteps


def remote_endpoints(state: dict[str, bytes], me: str) -> list[RemoteEndpoint]:
    vteps = live_vteps(state)
    out = []
    for key, value in state.items():
        if not key.startswith(r.ENDPOINTS):
            continue
        try:
            ep = r.EndpointRecord.from_json(value)
        except (ValueError, TypeError, json.JSONDecodeError):
            log.warning("ignoring malformed endpoint record %s", key)
            continue
        if ep.host != me and ep.host in vteps:
            out.append(RemoteEndpoint(ep.vni, ep.mac, ep.address, vteps[ep.host]))
    return out


class Reconciler:
    def __init__(self, *, host: str, dataplane: Dataplane,
                 on_new_vteps: Callable[[set[str]], None] = lambda vteps: None) -> None:
        self._host = host
        self._dataplane = dataplane
        self._on_new_vteps = on_new_vteps
        self._vteps: set[str] = set()

    @property
    def vteps(self) -> set[str]:
        return set(self._vteps)

    def on_change(self, state: dict[str, bytes]) -> None:
        remote = remote_endpoints(state, self._host)
        # Every other live host, not only those with endpoints yet: a host is known well
        # before its first container, which leaves time to resolve its VTEP.
        vteps = {v for h, v in live_vteps(state).items() if h != self._host}
        new, self._vteps = vteps - self._vteps, vteps
        try:
            if new:
                self._on_new_vteps(new)
            self._dataplane.set_remote(remote)
        except Exception:  # the periodic resync in the agent retries
            log.exception("could not apply remote endpoints")
