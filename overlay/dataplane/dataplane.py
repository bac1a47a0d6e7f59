"""What the agent wants OVS to do, as intent: endpoints here, endpoints elsewhere.

Callers say what exists (install_endpoint, remove_endpoint, set_remote); the Dataplane computes
the whole flow table from that and hands it to OVS as one atomic replacement. Every method is
idempotent and safe to call from any thread. A call returns once a table that includes its
change is in the switch: concurrent callers are coalesced into one ovs-ofctl run, so a burst of
ADDs costs far fewer than one replacement each.
"""

from __future__ import annotations

import threading

from overlay.dataplane.flows import DesiredState, LocalPort, RemoteEndpoint, compute_flows
from overlay.ovs.ofctl import Ofctl


class Dataplane:
    def __init__(self, *, ofctl: Ofctl, bridge: str, tunnel_ofport: int) -> None:
        self._ofctl = ofctl
        self._bridge = bridge
        self._tunnel_ofport = tunnel_ofport
        self._local: dict[str, LocalPort] = {}
        self._remote: tuple[RemoteEndpoint, ...] = ()
        self._state_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._wanted = 0     # bumped by every change
        self._applied = -1   # the change number the switch has caught up with
        self._installed: list[str] | None = None

    # --- intent -----------------------------------------------------------------------------

    def install_endpoint(self, key: str, port: LocalPort) -> None:
        with self._state_lock:
            self._local[key] = port
        self._sync()

    def remove_endpoint(self, key: str) -> None:
        with self._state_lock:
            self._local.pop(key, None)
        self._sync()

    def set_remote(self, endpoints: list[RemoteEndpoint]) -> None:
        with self._state_lock:
            self._remote = tuple(sorted(set(endpoints)))
        self._sync()

    def resync(self) -> None:
        """Push the table again even if unchanged: after OVS restarted, say."""
        with self._apply_lock:
            self._installed = None
        self._sync()

    # --- reading ----------------------------------------------------------------------------

    def state(self) -> DesiredState:
        with self._state_lock:
            return DesiredState(self._tunnel_ofport, tuple(self._local.values()), self._remote)

    def flows(self) -> list[str]:
        return compute_flows(self.state())

    def local_keys(self) -> set[str]:
        with self._state_lock:
            return set(self._local)

    # --- mechanics --------------------------------------------------------------------------

    def _sync(self) -> None:
        with self._state_lock:
            self._wanted += 1
            mine = self._wanted
        with self._apply_lock:
            if self._applied >= mine:  # someone else's run already included our change
                return
            with self._state_lock:
                covers = self._wanted
                state = DesiredState(self._tunnel_ofport, tuple(self._local.values()),
                                     self._remote)
            flows = compute_flows(state)
            if flows != self._installed:
                self._ofctl.replace_flows(self._bridge, flows)
                self._installed = flows
            self._applied = covers
