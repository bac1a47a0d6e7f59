"""What the agent wants OVS to do, as intent: endpoints here, endpoints elsewhere.

Callers say what exists (install_endpoint, remove_endpoint, set_remote); the Dataplane computes
the whole flow table from that and hands it to OVS as one atomic replacement.

Flow cookies carry the generation of the agent run (a counter kept in br-int's external_ids,
bumped at every start). A restarted agent's first replacement therefore rewrites every flow's
cookie in the same atomic bundle, without deleting and re-adding anything: packets never meet
a half-built table, and `ovs-ofctl dump-flows br-int cookie=0x0fe1a7...N/-1` shows which run
wrote what. Every method is
idempotent and safe to call from any thread. A call returns once a table that includes its
change is in the switch: concurrent callers are coalesced into one ovs-ofctl run, so a burst of
ADDs costs far fewer than one replacement each.
"""

from __future__ import annotations

import threading

from overlay.cni.errors import CniError
from overlay.dataplane.flows import DesiredState, LocalPort, RemoteEndpoint, compute_flows
from overlay.ovs.ofctl import Ofctl


class Dataplane:
    def __init__(self, *, ofctl: Ofctl, bridge: str, tunnel_ofport: int,
                 held: bool = False, generation: int = 0) -> None:
        self._ofctl = ofctl
        self._bridge = bridge
        self._tunnel_ofport = tunnel_ofport
        self._generation = generation
        self._local: dict[str, LocalPort] = {}
        self._remote: tuple[RemoteEndpoint, ...] = ()
        self._state_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._wanted = 0     # bumped by every change
        self._applied = -1   # the change number the switch has caught up with
        self._installed: list[str] | None = None
        # While held, intent is collected but nothing is pushed: a restarting agent must not
        # replace a correct table with one that lacks what it has not re-learned from etcd yet.
        self._held = held

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

    def load_local(self, ports: dict[str, LocalPort]) -> None:
        """Add many local endpoints at once (start-up), pushed with the next sync."""
        with self._state_lock:
            self._local.update(ports)

    def release(self) -> None:
        """End the hold: from now on every change is pushed, starting with this one."""
        self._held = False
        self.resync()

    def resync(self) -> None:
        """Push the table again even if unchanged: after OVS restarted, say."""
        with self._apply_lock:
            self._installed = None
        self._sync()

    # --- reading ----------------------------------------------------------------------------

    def state(self) -> DesiredState:
        with self._state_lock:
            return DesiredState(self._tunnel_ofport, tuple(self._local.values()), self._remote,
                                self._generation)

    def flows(self) -> list[str]:
        return compute_flows(self.state())

    def local_keys(self) -> set[str]:
        with self._state_lock:
            return set(self._local)

    def set_tunnel_ofport(self, ofport: int) -> None:
        with self._state_lock:
            self._tunnel_ofport = ofport

    def reload_local(self, ports: dict[str, LocalPort]) -> None:
        """Replace the local endpoints wholesale (ofports may have changed), and push."""
        with self._state_lock:
            self._local = dict(ports)
        self.resync()

    def switch_has(self, port: LocalPort) -> bool:
        """Does the switch itself (not just our intent) admit this port's traffic?"""
        lines = self._ofctl.dump_flows(self._bridge, f"table=0,in_port={port.ofport}")
        return any(f"dl_src={port.mac}" in line for line in lines)

    def switch_answers(self) -> bool:
        try:
            self._ofctl.dump_flows(self._bridge, "table=99")  # an empty table: a cheap probe
            return True
        except CniError:
            return False

    # --- mechanics --------------------------------------------------------------------------

    def _sync(self) -> None:
        if self._held:
            return
        with self._state_lock:
            self._wanted += 1
            mine = self._wanted
        with self._apply_lock:
            if self._applied >= mine:  # someone else's run already included our change
                return
            with self._state_lock:
                covers = self._wanted
                state = DesiredState(self._tunnel_ofport, tuple(self._local.values()),
                                     self._remote, self._generation)
            flows = compute_flows(state)
            if flows != self._installed:
                self._ofctl.replace_flows(self._bridge, flows)
                self._installed = flows
            self._applied = covers
