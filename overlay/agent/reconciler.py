"""From the control plane's state in etcd to the remote half of the flow table.

Level-triggered: it is handed the whole mirrored state (hosts, networks, endpoints) on every
change and derives the complete list of remote endpoints from it. An endpoint counts only while
its host is alive (its leased host key exists), so traffic to a lost host stops when the
lease expires, and resumes by itself when the host registers again.

Records are validated before they reach the flow table: whatever is in etcd is written into
OpenFlow text, so a malformed or hostile record (a VNI as a string, a MAC with a comma in it)
is skipped with a warning instead of breaking, or extending, every host's flow table.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable

from overlay.cni.netconf import VNI_MAX, VNI_MIN
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import RemoteEndpoint
from overlay.store import records as r

log = logging.getLogger(__name__)

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _ipv4(value: object) -> str:
    return str(ipaddress.IPv4Address(value if isinstance(value, str) else ""))


def live_vteps(state: dict[str, bytes]) -> dict[str, str]:
    """host -> VTEP address, for every host whose leased record exists."""
    vteps: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith(r.HOSTS):
            try:
                vteps[key[len(r.HOSTS):]] = _ipv4(r.HostRecord.from_json(value).vtep)
            except (ValueError, TypeError, KeyError, AttributeError):
                log.warning("ignoring malformed host record %s", key)
    return vteps


def _remote(ep: r.EndpointRecord, vtep: str) -> RemoteEndpoint:
    if not isinstance(ep.vni, int) or isinstance(ep.vni, bool) or not VNI_MIN <= ep.vni <= VNI_MAX:
        raise ValueError(f"bad vni {ep.vni!r}")
    if not isinstance(ep.mac, str) or not _MAC_RE.fullmatch(ep.mac):
        raise ValueError(f"bad mac {ep.mac!r}")
    if not isinstance(ep.ips, list) or not ep.ips:
        raise ValueError(f"bad ips {ep.ips!r}")
    ips = tuple(str(ipaddress.ip_interface(ip).ip) for ip in ep.ips)
    return RemoteEndpoint(ep.vni, ep.mac, ips, vtep)


def remote_endpoints(state: dict[str, bytes], me: str) -> list[RemoteEndpoint]:
    vteps = live_vteps(state)
    out = []
    for key, value in state.items():
        if not key.startswith(r.ENDPOINTS):
            continue
        try:
            ep = r.EndpointRecord.from_json(value)
            if ep.host != me and ep.host in vteps:
                out.append(_remote(ep, vteps[ep.host]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring malformed endpoint record %s: %s", key, exc)
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
