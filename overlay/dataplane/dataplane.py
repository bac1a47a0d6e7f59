"""What the agent wants OVS to do, applied to the switch: endpoints here, endpoints elsewhere.

Callers say what changed (install_endpoint, remove_endpoint, update_remote). The model
(intent.py) recomputes the rules of just the objects concerned (flows.py) and turns the
difference into add / modify_strict / delete_strict operations (flowtable.py); this module
applies them: it sends them in one atomic OpenFlow bundle, over a persistent OpenFlow
connection (ovs/openflow.py) when it has one, or through ovs-ofctl (both are a Switch,
ovs/switch.py). It holds them while told to, commits what concurrent callers queued together,
and recovers (wholetable.py) when the switch's table is unknown. No call reads the switch's
table back, so an event costs the same with 10 remote endpoints as with 50,000.

A whole-table push is the recovery path only (wholetable.py): at start-up, after ovs-vswitchd
restarted, after a bundle or a change of the model failed (the switch's table is then
unknown), and when `verify` finds that the switch holds other rules than we want.

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
    DesiredState,
    Gateway,
    LocalPort,
    RemoteEndpoint,
    cookie,
    gateway_flows,
    local_port_flows,
)
from overlay.dataplane.intent import Intent
from overlay.dataplane.policy_flows import CompiledRule
from overlay.dataplane.policy_state import PeerInfo, StatsIndex
from overlay.dataplane.wholetable import WholeTable
from overlay.model import CLASSIFY, FORWARD
from overlay.ovs.flow import ADD, DELETE, MODIFY, Actions, Identity, Op
from overlay.ovs.ofctl import Ofctl
from overlay.ovs.openflow import Channel, Unsupported
from overlay.ovs.switch import Switch
from overlay.policy.labels import Labels
from overlay.policy.model import Policy

log = logging.getLogger(__name__)

# Rules verify() compares one by one each round at most (see there).
CONTENT_RULES = 20_000

# (adds, modifies, deletes, seconds, applied): told after every push. A whole-table
# replacement counts as a push with no operations listed (replace-flows diffs on its own).
OnBundle = Callable[[int, int, int, float, bool], None]


class Dataplane:
    def __init__(self, *, ofctl: Ofctl, bridge: str, tunnel_ofport: int,
                 held: bool = False, generation: int = 0,
                 on_bundle: OnBundle = lambda adds, mods, dels, seconds, ok: None,
                 channel: Channel | None = None) -> None:
        self._switch: Switch = ofctl.on(bridge)  # ovs-ofctl's: every rule, at a process a call
        self._ofctl, self._bridge = ofctl, bridge
        self._channel = channel  # a persistent OpenFlow connection for bundles, if given
        self._on_bundle = on_bundle
        self._cookie = cookie(generation)
        self._cookie_value = int(self._cookie, 16)
        self._whole = WholeTable(switch=self._switch, channel=channel, generation=generation)
        # The whole table has been installed (or found in place) at least once by this run.
        self.verified = False
        self._intent = Intent(tunnel_ofport=tunnel_ofport, generation=generation)
        self._state_lock = threading.Lock()  # the intent above and the queue below
        self._apply_lock = threading.Lock()  # one ovs-ofctl run at a time
        self._pending: list[Op] = []
        self._queued = 0     # bumped by every change
        self._applied = 0    # the change number the switch has caught up with
        self._dirty = True   # the switch's table is unknown: the next push replaces it whole
        # While held, intent is collected but nothing is pushed: a restarting agent must not
        # replace a correct table with one that lacks what it has not re-learned from etcd yet.
        self._held = held
        self._rounds = 0          # verify() rounds
        self.bundles = 0          # incremental bundles sent, and whole-table replacements:
        self.replacements = 0     # figures for `overlayctl status` and the benchmark

    # --- intent -----------------------------------------------------------------------------

    def install_endpoint(self, key: str, port: LocalPort, labels: Labels | None = None) -> None:
        """`labels`: the endpoint's own (the CNI ADD has them), so that policies select it
        from its first rules, not only once its record comes back through the etcd watch."""
        def change() -> list[Op]:
            ops = [] if labels is None else self._intent.policy.set_peers(
                {key: PeerInfo(key.split("/", 1)[0], port.ips, labels)})
            return ops + self._intent.set_local(key, port, want_ops=self._ops_wanted())
        self._change(change)

    def remove_endpoint(self, key: str) -> None:
        self._change(lambda: self._intent.set_local(key, None, want_ops=self._ops_wanted()))

    def update_remote(self, changes: Mapping[str, RemoteEndpoint | None],
                      peers: Mapping[str, PeerInfo | None] | None = None) -> None:
        """Apply a batch of remote endpoint puts (an endpoint) and deletes (None), and with
        `peers` what policies know of the same endpoints (update_peers), in one change: a
        push that fails cannot then leave the policies without what the forwarding has."""
        def change() -> list[Op]:
            ops = self._intent.set_remote(changes, want_ops=self._ops_wanted())
            return ops + (self._intent.policy.set_peers(peers) if peers else [])
        self._change(change)

    def set_gateway(self, vni: int, gateway: Gateway | None) -> None:
        """Install (or with None remove) the gateway rules of network `vni`. Idempotent; the
        gateway manager decides when a network has one (overlay/gateway/manager.py)."""
        with self._state_lock:
            ops = self._intent.set_gateway(vni, gateway)
            if ops is None:
                return
            mine = self._queue(ops)
        self._push(mine)

    def update_policies(self, changes: Mapping[tuple[str, str], Policy | None]) -> None:
        """(network, name) -> the policy (None: deleted); see policy_state.py."""
        def change() -> list[Op]:
            ops: list[Op] = []
            for (network, name), policy in changes.items():
                ops += self._intent.policy.set_policy(network, name, policy)
            return ops
        self._change(change)

    def update_peers(self, changes: Mapping[str, PeerInfo | None]) -> None:
        """What policies know of endpoints (their labels), local or remote, by intent key."""
        self._change(lambda: self._intent.policy.set_peers(changes))

    def placed_rules(self) -> dict[tuple[str, str], list[CompiledRule]]:
        """(network, policy) -> its rules as placed in the switch (trace, metrics)."""
        with self._state_lock:
            return self._intent.policy.placed()

    def flow_stats(self, match: str) -> list[str]:
        """The switch's rules `match` selects, with their counters (as ovs-ofctl writes them)."""
        return self._ofctl.dump_flow_stats(self._bridge, match)

    def policy_stats_index(self) -> StatsIndex:
        with self._state_lock:
            return self._intent.policy.stats_index()

    def load_local(self, ports: dict[str, LocalPort]) -> None:
        """Add many local endpoints at once (start-up), pushed with the next push."""
        with self._state_lock:
            for key, port in ports.items():
                self._queue(self._intent.set_local(key, port, want_ops=self._ops_wanted()))

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
            for key in self._intent.local_keys() - set(ports):
                self._queue(self._intent.set_local(key, None, want_ops=self._ops_wanted()))
            for key, port in ports.items():
                self._queue(self._intent.set_local(key, port, want_ops=self._ops_wanted()))
        self.resync()

    def set_tunnel_ofport(self, ofport: int) -> None:
        """Every tunnel rule names the port: rebuild the model (pushed by the next resync)."""
        with self._state_lock:
            if self._intent.set_tunnel_ofport(ofport):
                self._dirty = True

    def verify(self) -> bool:
        """Drift check: does the switch hold exactly the rules we want? If not, replace the
        whole table. Returns False when drift was found (and repaired).

        Rule for rule (table, priority, match and actions, cookies aside: one dump over the
        channel, Channel.holds_exactly), not a count: a change lost on its way (a modify, or
        an add and a delete together) leaves the count as it was and was never repaired.
        Without a channel, or with a rule the channel cannot encode, the count is all that is
        compared. A table left unknown by a failed push (a bundle the switch refused, a
        connection cut mid-bundle, a model change that failed) is replaced here too:
        otherwise only the next change would repair it, and a quiet host may have none for
        hours.

        Neither lock is held while the model is copied and the switch read: at 100,000 rules
        the copy took 0.85 s and encoding it 0.7 s of CPU (load 17), the switch's answer
        ~0.5 s, and an event that had to wait for them would show as the p99 of event ->
        switch (a push over the channel does wait for the dump, which holds the channel). A
        change meanwhile makes the comparison meaningless (or the copy fail), so it is then
        simply not judged (the next round will). Above CONTENT_RULES rules the rule for rule
        comparison comes every few rounds only (the count on the others), so that its cost
        per minute stays that of CONTENT_RULES rules a round."""
        with self._state_lock:
            if self._held or self._pending:
                return True  # a push is due anyway
            if self._dirty:
                log.warning("the switch's table is unknown since a push failed; replacing it")
                mine = self._queue([])
            else:
                mine = 0
            queued, applied, size = self._queued, self._applied, len(self._intent)
        if mine:
            self._push(mine)
            return False
        self._rounds += 1
        if self._channel is not None and self._rounds % max(1, -(-size // CONTENT_RULES)) == 0:
            try:
                same = self._switch_holds(self._intent.rules())
            except (RuntimeError, KeyError):  # the model changed while copied: not judged
                return True
        else:
            same = self._switch.count() == size
        with self._apply_lock, self._state_lock:
            if (self._applied != applied or self._queued != queued or self._pending
                    or self._dirty or same):
                return True
            log.warning("the switch's table is not the %d rules wanted; replacing it", size)
            self._dirty = True
            mine = self._queue([])
        self._push(mine)
        return False

    def _switch_holds(self, wanted: dict[Identity, Actions]) -> bool:
        if self._channel is not None:
            try:
                return self._channel.holds_exactly(wanted)[0]
            except Unsupported as exc:
                log.debug("drift check by count: %s", exc)
        return self._switch.count() == len(wanted)

    # --- reading ----------------------------------------------------------------------------

    def state(self) -> DesiredState:
        with self._state_lock:
            return self._intent.state()

    def flows(self) -> list[str]:
        with self._state_lock:
            return self._intent.render(self._cookie)

    def wanted(self) -> dict[Identity, Actions]:
        """identity -> actions of every rule we want in the switch, as values."""
        with self._state_lock:
            return self._intent.rules()

    def counts(self) -> tuple[int, int, int]:
        """(local endpoints, remote endpoints, rules) without copying anything."""
        with self._state_lock:
            return self._intent.counts()

    def flows_per_table(self) -> dict[int, int]:
        """Rules per table as we want them (verify() keeps the switch's table equal)."""
        with self._state_lock:
            identities = list(self._intent.rules())
        counts: Counter[int] = Counter(identity.table for identity in identities)
        return dict(counts)

    def table_in_switch(self) -> bool:
        """Has this run put its whole table in the switch (or found it there), with nothing
        known to be missing since (a failed bundle, or ovs-vswitchd restarted)?"""
        return self.verified and not self._dirty

    def local_keys(self) -> set[str]:
        with self._state_lock:
            return self._intent.local_keys()

    def switch_has(self, port: LocalPort) -> bool:
        """Does the switch itself (not just our intent) admit this port's traffic: does it
        hold one of the port's admission rules, actions and all?"""
        return any(self._switch.holds(rule) for rule in local_port_flows(port)
                   if rule.table == CLASSIFY)

    def gateway(self, vni: int) -> Gateway | None:
        with self._state_lock:
            return self._intent.gateway(vni)

    def local_vnis(self) -> dict[int, set[str]]:
        """vni -> keys of this host's endpoints in it."""
        with self._state_lock:
            return self._intent.local_vnis()

    def switch_has_gateway(self, gw: Gateway) -> bool:
        """Does the switch itself send frames for the gateway MAC to the gateway port?"""
        return all(self._switch.holds(rule) for rule in gateway_flows(gw)
                   if rule.table == FORWARD)

    def switch_answers(self) -> bool:
        return self._switch.answers()

    # --- application (callers hold the state lock) --------------------------------------------

    def _ops_wanted(self) -> bool:
        """Are operations of the model's changes of any use? Not while held or dirty: the
        next push replaces the whole table (a restarted agent's first snapshot)."""
        return not (self._held or self._dirty)

    def _change(self, compute: Callable[[], list[Op]]) -> None:
        """Change the model (`compute`, under the state lock) and push its operations.

        A change that fails half-way (a bug, an input nobody foresaw) may have changed part
        of the model and lost the operations of that part: the model and the switch no longer
        differ by what is queued. The switch's table is then as unknown as after a failed
        bundle, so the push replaces it whole with what the model holds, and the error is
        raised after it (the caller logs it)."""
        failed: Exception | None = None
        with self._state_lock:
            try:
                ops = compute()
            except Exception as exc:  # noqa: BLE001 (whatever it was, the table is unknown)
                failed, ops = exc, []
                self._dirty = True
            mine = self._queue(ops)
        self._push(mine)
        if failed is not None:
            raise failed

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
                whole = self._intent.rules() if self._dirty else None
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
            except Exception:  # CniError, or anything else: the operations are taken
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
