"""What the agent wants OVS to do, as intent: endpoints here, endpoints elsewhere.

Callers say what changed (install_endpoint, remove_endpoint, update_remote). The Dataplane
recomputes the rules of just the objects concerned (flows.py), turns the difference into
add / modify_strict / delete_strict operations (flowtable.py) and sends them in one atomic
OpenFlow bundle, over a persistent OpenFlow connection (ovs/openflow.py) when it has one. No
call reads the switch's table back, so an event costs the same with 10 remote endpoints as
with 50,000.

A whole-table push is the recovery path only (wholetable.py): at start-up, after ovs-vswitchd
restarted, after a bundle failed (the switch's table is then unknown), and when `verify` finds
that the switch holds a different number of rules than we want.

Flow cookies carry the generation of the agent run that wrote the rule (a counter kept in
br-int's external_ids, bumped at every start). A restarted agent's first whole table is either
found in the switch already (one dump, compared rule for rule: the rules stay as they are, with
the cookie of the run that wrote them) or rewritten under the new cookie in one atomic bundle,
without deleting and re-adding anything: packets never meet a half-built table, and
`ovs-ofctl dump-flows br-int cookie=0x0fe1a7...N/-1` shows which run wrote what.

Every method is idempotent and safe to call from any thread. A call returns once the switch
holds its change. Operations queue in the order the model changed; whoever holds the apply
lock sends everything queued so far in one bundle, so concurrent callers (a burst of ADDs and
watch events) share ovs-ofctl runs instead of waiting for one each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from overlay.dataplane.flows import (
    CLASSIFY,
    FORWARD,
    DesiredState,
    Gateway,
    LocalPort,
    RemoteEndpoint,
    base_flows,
    cookie,
    gateway_flows,
    local_port_flows,
    network_flows,
    remote_endpoint_flows,
)
from overlay.dataplane.flowtable import ADD, DELETE, MODIFY, FlowTable, Op, Owner
from overlay.dataplane.wholetable import WholeTable
from overlay.errors import CniError
from overlay.ovs.flow import Actions, Flow, Identity
from overlay.ovs.ofctl import Ofctl
from overlay.ovs.openflow import Channel, Unsupported
from overlay.ovs.switch import Switch

log = logging.getLogger(__name__)

# (adds, modifies, deletes, seconds, applied): told after every push. A whole-table
# replacement counts as a push with no operations listed (replace-flows diffs on its own).
OnBundle = Callable[[int, int, int, float, bool], None]


class Dataplane:
    def __init__(self, *, ofctl: Ofctl, bridge: str, tunnel_ofport: int,
                 held: bool = False, generation: int = 0,
                 on_bundle: OnBundle = lambda adds, mods, dels, seconds, ok: None,
                 channel: Channel | None = None) -> None:
        self._switch: Switch = ofctl.on(bridge)  # ovs-ofctl's: every rule, at a process a call
        self._channel = channel  # a persistent OpenFlow connection for bundles, if given
        self._on_bundle = on_bundle
        self._bridge = bridge
        self._tunnel_ofport = tunnel_ofport
        self._cookie = cookie(generation)
        self._cookie_value = int(self._cookie, 16)
        self._generation = generation
        self._whole = WholeTable(switch=self._switch, channel=channel, generation=generation)
        # The whole table has been installed (or found in place) at least once by this run.
        self.verified = False
        self._local: dict[str, LocalPort] = {}
        self._remote: dict[str, RemoteEndpoint] = {}
        self._gateways: dict[int, Gateway] = {}  # vni -> this host's gateway port for it
        self._ports_by_vni: dict[int, dict[str, int]] = {}  # vni -> local key -> ofport
        self._vteps_by_vni: dict[int, Counter[str]] = {}    # remote endpoints per VTEP
        self._table = FlowTable()
        self._table.set(Owner.BASE, base_flows())
        self._state_lock = threading.Lock()  # the model above and the queue below
        self._apply_lock = threading.Lock()  # one ovs-ofctl run at a time
        self._pending: list[Op] = []
        self._queued = 0     # bumped by every change
        self._applied = 0    # the change number the switch has caught up with
        self._dirty = True   # the switch's table is unknown: the next push replaces it whole
        # While held, intent is collected but nothing is pushed: a restarting agent must not
        # replace a correct table with one that lacks what it has not re-learned from etcd yet.
        self._held = held
        self.bundles = 0          # incremental bundles sent, and whole-table replacements:
        self.replacements = 0     # figures for `overlayctl status` and the benchmark

    # --- intent -----------------------------------------------------------------------------

    def install_endpoint(self, key: str, port: LocalPort) -> None:
        with self._state_lock:
            mine = self._queue(self._set_local(key, port))
        self._push(mine)

    def remove_endpoint(self, key: str) -> None:
        with self._state_lock:
            mine = self._queue(self._set_local(key, None))
        self._push(mine)

    def update_remote(self, changes: Mapping[str, RemoteEndpoint | None]) -> None:
        """Apply a batch of remote endpoint puts (an endpoint) and deletes (None)."""
        with self._state_lock:
            ops: list[Op] = []
            touched: set[int] = set()
            for key, endpoint in changes.items():
                ops += self._set_remote(key, endpoint, touched)
            for vni in touched:
                ops += self._refresh_network(vni)
            mine = self._queue(ops)
        self._push(mine)

    def set_gateway(self, vni: int, gateway: Gateway | None) -> None:
        """Install (or with None remove) the gateway rules of network `vni`. Idempotent; the
        gateway manager decides when a network has one (overlay/gateway/manager.py)."""
        with self._state_lock:
            if self._gateways.get(vni) == gateway:
                return
            if gateway is None:
                del self._gateways[vni]
                mine = self._queue(self._table.drop(Owner.gateway(vni)))
            else:
                self._gateways[vni] = gateway
                mine = self._queue(self._table.set(Owner.gateway(vni), gateway_flows(gateway)))
        self._push(mine)

    def load_local(self, ports: dict[str, LocalPort]) -> None:
        """Add many local endpoints at once (start-up), pushed with the next push."""
        with self._state_lock:
            for key, port in ports.items():
                self._queue(self._set_local(key, port))

    def release(self) -> None:
        """End the hold: from now on every change is pushed, starting with the whole table."""
        self._held = False
        self.resync()

    def resync(self) -> None:
        """Replace the whole table in the switch (after OVS restarted, or drift was found)."""
        with self._state_lock:
            self._dirty = True
            mine = self._queue([])
        self._push(mine)

    def reload_local(self, ports: dict[str, LocalPort]) -> None:
        """Replace the local endpoints wholesale (ofports may have changed), and resync."""
        with self._state_lock:
            for key in set(self._local) - set(ports):
                self._queue(self._set_local(key, None))
            for key, port in ports.items():
                self._queue(self._set_local(key, port))
        self.resync()

    def set_tunnel_ofport(self, ofport: int) -> None:
        """Every tunnel rule names the port: rebuild the model (pushed by the next resync)."""
        with self._state_lock:
            if ofport == self._tunnel_ofport:
                return
            self._tunnel_ofport = ofport
            self._table = FlowTable()
            self._table.set(Owner.BASE, base_flows())
            for key, port in self._local.items():
                self._table.set(Owner.local(key), local_port_flows(port))
            for vni in self._ports_by_vni:
                self._install_network(vni)
            for vni, gw in self._gateways.items():
                self._table.set(Owner.gateway(vni), gateway_flows(gw))
            self._dirty = True

    def verify(self) -> bool:
        """Cheap drift check: does the switch hold as many rules as we want? If not, replace
        the whole table. Returns False when drift was found (and repaired).

        A table left unknown by a failed push (a bundle the switch refused, a connection cut
        mid-bundle) is replaced here too: otherwise only the next change would repair it, and
        a quiet host may have none for hours.

        The count is taken without holding the apply lock: at 100,000 rules dump-aggregate
        takes the switch ~100 ms, and an event that had to wait for it showed as the p99 of
        event -> switch. A push meanwhile makes the count meaningless, so it is then simply
        not judged (the next round will)."""
        with self._state_lock:
            if self._held or self._pending:
                return True  # a push is due anyway
            if self._dirty:
                log.warning("the switch's table is unknown since a push failed; replacing it")
                mine = self._queue([])
            else:
                mine = 0
            wanted, applied = len(self._table), self._applied
        if mine:
            self._push(mine)
            return False
        found = self._switch.count()
        with self._apply_lock, self._state_lock:
            if (self._applied != applied or self._pending or self._dirty
                    or len(self._table) != wanted or found == wanted):
                return True
            log.warning("switch holds %d rules where %d are wanted; replacing the table",
                        found, wanted)
            self._dirty = True
            mine = self._queue([])
        self._push(mine)
        return False

    # --- reading ----------------------------------------------------------------------------

    def state(self) -> DesiredState:
        with self._state_lock:
            return DesiredState(self._tunnel_ofport, dict(self._local), dict(self._remote),
                                self._generation, dict(self._gateways))

    def flows(self) -> list[str]:
        with self._state_lock:
            return self._table.render(self._cookie)

    def wanted(self) -> dict[Identity, Actions]:
        """identity -> actions of every rule we want in the switch, as values."""
        with self._state_lock:
            return self._table.flows()

    def counts(self) -> tuple[int, int, int]:
        """(local endpoints, remote endpoints, rules) without copying anything."""
        with self._state_lock:
            return len(self._local), len(self._remote), len(self._table)

    def flows_per_table(self) -> dict[int, int]:
        """Rules per table as we want them (verify() keeps the switch's count equal)."""
        with self._state_lock:
            identities = list(self._table.flows())
        counts: Counter[int] = Counter(identity.table for identity in identities)
        return dict(counts)

    def table_in_switch(self) -> bool:
        """Has this run put its whole table in the switch (or found it there), with nothing
        known to be missing since (a failed bundle, or ovs-vswitchd restarted)?"""
        return self.verified and not self._dirty

    def local_keys(self) -> set[str]:
        with self._state_lock:
            return set(self._local)

    def switch_has(self, port: LocalPort) -> bool:
        """Does the switch itself (not just our intent) admit this port's traffic: does it
        hold one of the port's admission rules, actions and all?"""
        return any(self._switch.holds(rule) for rule in local_port_flows(port)
                   if rule.table == CLASSIFY)

    def gateway(self, vni: int) -> Gateway | None:
        with self._state_lock:
            return self._gateways.get(vni)

    def local_vnis(self) -> dict[int, set[str]]:
        """vni -> keys of this host's endpoints in it."""
        with self._state_lock:
            return {vni: set(keys) for vni, keys in self._ports_by_vni.items()}

    def switch_has_gateway(self, gw: Gateway) -> bool:
        """Does the switch itself send frames for the gateway MAC to the gateway port?"""
        return all(self._switch.holds(rule) for rule in gateway_flows(gw)
                   if rule.table == FORWARD)

    def switch_answers(self) -> bool:
        return self._switch.answers()

    # --- the model (callers hold the state lock) ---------------------------------------------

    def _set_local(self, key: str, port: LocalPort | None) -> list[Op]:
        old = self._local.get(key)
        if old == port:
            return []
        if old is not None:
            self._ports_by_vni[old.vni].pop(key, None)
            if not self._ports_by_vni[old.vni]:
                del self._ports_by_vni[old.vni]
        if port is None:
            del self._local[key]
            ops = self._table.drop(Owner.local(key))
        else:
            self._local[key] = port
            self._ports_by_vni.setdefault(port.vni, {})[key] = port.ofport
            ops = self._table.set(Owner.local(key), local_port_flows(port))
        for vni in {p.vni for p in (old, port) if p is not None}:
            ops += self._refresh_network(vni)
        return ops

    def _set_remote(self, key: str, endpoint: RemoteEndpoint | None, touched: set[int]) -> list[Op]:
        old = self._remote.get(key)
        if old == endpoint:
            return []
        if old is not None:
            vteps = self._vteps_by_vni[old.vni]
            vteps[old.vtep] -= 1
            if vteps[old.vtep] <= 0:  # the last endpoint of that host in the network
                del vteps[old.vtep]
                touched.add(old.vni)
            del self._remote[key]
        if endpoint is not None:
            self._remote[key] = endpoint
            vteps = self._vteps_by_vni.setdefault(endpoint.vni, Counter())
            if vteps[endpoint.vtep] == 0:
                touched.add(endpoint.vni)
            vteps[endpoint.vtep] += 1
        # Remote rules exist only for networks with local ports: a host has no use for them
        # otherwise (see _refresh_network for when a network appears or goes).
        if endpoint is not None and endpoint.vni in self._ports_by_vni:
            return self._table.set(Owner.remote(key),
                                   remote_endpoint_flows(endpoint, self._tunnel_ofport),
                                   want_ops=self._ops_wanted())
        return self._table.drop(Owner.remote(key))

    def _refresh_network(self, vni: int) -> list[Op]:
        present = vni in self._ports_by_vni
        if present and not self._table.owns(Owner.network(vni)):
            return self._install_network(vni)
        if not present:
            ops = []
            for key in self._remote_keys(vni):
                ops += self._table.drop(Owner.remote(key))
            return ops + self._table.drop(Owner.network(vni))
        return self._table.set(Owner.network(vni), self._network_flows(vni))

    def _install_network(self, vni: int) -> list[Op]:
        """A network's first local port: its remote endpoints become rules too."""
        ops, wanted = [], self._ops_wanted()
        for key in self._remote_keys(vni):
            ops += self._table.set(Owner.remote(key),
                                   remote_endpoint_flows(self._remote[key], self._tunnel_ofport),
                                   want_ops=wanted)
        return ops + self._table.set(Owner.network(vni), self._network_flows(vni))

    def _remote_keys(self, vni: int) -> list[str]:
        """The remote endpoints of one network: a scan, needed only when the network's first
        local port arrives or its last one leaves (an index by VNI cost 2 MB at 50,000)."""
        return [key for key, e in self._remote.items() if e.vni == vni]

    def _network_flows(self, vni: int) -> list[Flow]:
        return network_flows(vni, self._ports_by_vni[vni].values(),
                             self._vteps_by_vni.get(vni, Counter()).keys(), self._tunnel_ofport)

    def _ops_wanted(self) -> bool:
        """Are operations of the model's changes of any use? Not while held or dirty: the
        next push replaces the whole table (a restarted agent's first snapshot)."""
        return not (self._held or self._dirty)

    def _queue(self, ops: list[Op]) -> int:
        if self._ops_wanted():  # otherwise a whole-table push will carry these anyway
            self._pending += ops
        self._queued += 1
        return self._queued

    # --- mechanics --------------------------------------------------------------------------

    def _send(self, ops: list[Op]) -> None:
        """One atomic bundle: over the persistent channel (a few ms), or through ovs-ofctl
        when there is none or it cannot encode one of the rules (tens of ms, but complete)."""
        if self._channel is not None:
            try:
                # Actions as the table holds them: the channel reads the short forms itself.
                self._channel.apply(ops, self._cookie_value)
                return
            except Unsupported as exc:
                log.debug("bundle through ovs-ofctl: %s", exc)
        self._switch.apply(ops, self._cookie_value)

    def _replace(self, flows: dict[Identity, Actions]) -> None:
        """Make the switch hold exactly `flows`, atomically (see wholetable.py)."""
        log.info("%s", self._whole.install(flows))
        self.verified = True

    def _push(self, mine: int) -> None:
        if self._held:
            return
        with self._apply_lock:
            if self._applied >= mine:  # someone else's run already included our change
                return
            with self._state_lock:
                covers, ops, self._pending = self._queued, self._pending, []
                whole = self._table.flows() if self._dirty else None
                self._dirty = False
            kinds = Counter(op.kind for op in ops) if whole is None else Counter()
            started = time.monotonic()
            try:
                if whole is not None:
                    self._replace(whole)
                    self.replacements += 1
                elif ops:
                    self._send(ops)
                    self.bundles += 1
            except CniError:
                with self._state_lock:  # the bundle may or may not have landed: start over
                    self._dirty = True
                    self._pending = []
                self._on_bundle(kinds[ADD], kinds[MODIFY], kinds[DELETE],
                                time.monotonic() - started, False)
                raise
            if whole is not None or ops:
                self._on_bundle(kinds[ADD], kinds[MODIFY], kinds[DELETE],
                                time.monotonic() - started, True)
            self._applied = covers
