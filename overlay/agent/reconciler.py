"""From etcd changes to remote endpoints in the dataplane, one key at a time.

The watches (store/watch.py) deliver keyed changes: host records (`on_hosts`) and endpoint
records of the networks this host takes part in (`on_endpoints`). Each change touches only
what depends on that key: an endpoint put or delete becomes one remote endpoint update; a host
change (lease expired, registered again, VTEP moved) updates that host's endpoints only, found
through an index. One flow bundle per batch; nothing here walks the whole cluster.

An endpoint counts only while its host is alive (its leased host key exists), so traffic to a
lost host stops `host_grace` seconds after its key went, and resumes when it registers again.
The grace: an agent that restarts more slowly than its lease TTL (a big table, a slow VM) lets
its key lapse although its switch never stopped forwarding; if it comes back within the grace
with the same VTEP, no flow changes at all.

Records are verified first (agent/verify.py): a malformed one, or one that disagrees with its
key, its network's VNI or subnet, is skipped alone, logged and counted (on_reject). An endpoint
goes to the VTEP of its host's record, never to one its own record names; for an encrypted
network, to the host's WireGuard address (`sealed`, agent/encryption.py) or nowhere, and a
network once encrypted here stays so (agent/encryption_pins.py). Claims of one address or MAC
are settled by creation revision (agent/claims.py); records naming this host are kept whole
(`own_records`, the janitor's view). Network facts (`on_networks`) outlive their record until
a restart: a racing ADD may just have written one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from overlay.agent import verify
from overlay.agent.claims import Claims, claimed_values
from overlay.agent.encryption_pins import EncryptionPins
from overlay.agent.policies import peer_infos
from overlay.agent.timers import Cancellable, start_timer
from overlay.agent.verify import Endpoint, NetworkFacts, Rejected
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import RemoteEndpoint
from overlay.store import records as r
from overlay.store.stream import Change

log = logging.getLogger(__name__)

SHOWN_REJECTED = 200  # rejected keys remembered for `overlayctl doctor` (the metric counts all)


class Reconciler:
    def __init__(self, *, host: str, dataplane: Dataplane,
                 on_new_vteps: Callable[[set[str]], None] = lambda vteps: None,
                 host_grace: float = 0.0,
                 schedule: Callable[[float, Callable[[], None]], Cancellable] = start_timer,
                 remembered_vteps: Mapping[str, str] | None = None,
                 on_reject: Callable[[str, str], None] = lambda kind, reason: None,
                 on_conflict: Callable[[], None] = lambda: None,
                 sealed: Callable[[str], str | None] = lambda host: None,
                 encrypted_networks: Iterable[str] = ()) -> None:
        self._host = host
        self._dataplane = dataplane
        self._on_new_vteps = on_new_vteps
        self._grace = host_grace
        self._schedule = schedule
        self._on_reject = on_reject
        self._on_conflict = on_conflict
        self._sealed = sealed  # host -> WireGuard address; None: no traffic of encrypted networks
        self._pins = EncryptionPins(encrypted_networks, lambda key, exc: self._reject("network", key, exc))
        self._lock = threading.Lock()  # watches of several prefixes call in on their threads
        self._vteps: dict[str, str] = {}                  # live host -> VTEP (departing ones too)
        self._departing: dict[str, Cancellable] = {}      # host whose key went -> its expiry
        self._seen: set[str] = set()                      # hosts whose key or VTEP we learnt
        self._remembered = dict(remembered_vteps or {})  # VTEPs an earlier run learnt (peers.py)
        self._endpoints: dict[str, Endpoint] = {}         # etcd key -> endpoint, any host
        self._by_host: dict[str, set[str]] = {}           # host -> its endpoint keys
        self._own: dict[str, r.EndpointRecord] = {}       # records naming this host
        self._vnis: dict[int, int] = {}                   # one int object per VNI (memory)
        self._network_records: dict[str, tuple[int, NetworkFacts]] = {}  # name -> (created, ..)
        self._networks: dict[str, NetworkFacts] = {}      # those that hold their VNI
        self._vni_losers: set[str] = set()                # the others (reported once)
        self._claims = Claims(rank=self._rank, eligible=self._eligible)
        self._rejected: dict[str, str] = {}               # key -> why (a bounded sample)

    @property
    def vteps(self) -> set[str]:
        """VTEPs of every other live host."""
        with self._lock:
            return {v for h, v in self._vteps.items() if h != self._host}

    def host_vteps(self) -> dict[str, str]:
        """host -> VTEP of every host known (this one too, departing ones too): what a
        network's subnet must not cover (overlay/cni/subnets.py)."""
        with self._lock:
            return dict(self._vteps)

    def known_vteps(self) -> dict[str, str]:
        """Every other host's VTEP learnt from a host record (what agent/peers.py saves)."""
        with self._lock:
            return {h: v for h, v in self._vteps.items() if h != self._host}

    def own_records(self) -> list[r.EndpointRecord]:
        with self._lock:
            return list(self._own.values())

    def remote_count(self) -> int:
        with self._lock:
            return sum(len(keys) for h, keys in self._by_host.items()
                       if h != self._host and h in self._vteps)

    # --- changes from the watches --------------------------------------------------------------

    def on_hosts(self, changes: list[Change]) -> None:
        touched: set[str] = set()
        new_vteps: set[str] = set()
        with self._lock:
            for change in changes:
                host = change.key[len(r.HOSTS):]
                vtep = None
                if change.value is not None:
                    try:
                        vtep = verify.parse_host(change.key, change.value)
                    except Exception as exc:  # noqa: BLE001 (any shape: skipped and counted)
                        self._reject("host", change.key, exc)
                self._seen.add(host)
                if vtep is not None:
                    self._cancel_departure(host)
                elif host != self._host and host in self._vteps and self._grace > 0:
                    self._depart(host)
                    continue
                if self._vteps.get(host) == vtep:
                    continue
                if vtep is None:
                    self._vteps.pop(host, None)
                else:
                    self._vteps[host] = vtep
                    if host != self._host:
                        new_vteps.add(vtep)
                if host != self._host:
                    self._touch_host(host, touched)
            self._apply(touched, new_vteps)

    def _touch_host(self, host: str, touched: set[str]) -> None:
        """(Under the lock.) The host came or went: its endpoints, and the rivals of their
        contested claims (a claim counts only while its host is live), are to be looked at."""
        for key in self._by_host.get(host, ()):
            touched.add(key)
            endpoint = self._endpoints[key]
            claimed = claimed_values(endpoint.ips, endpoint.mac)
            touched.update(self._claims.rivals(key, endpoint.network, claimed))

    def _depart(self, host: str, why: str = "left etcd") -> None:
        """(Under the lock.) The host's key went: its flows stay for the grace period."""
        if host in self._departing:
            return
        expiry: list[Cancellable] = []
        expiry.append(self._schedule(self._grace, lambda: self._expire(host, expiry[0])))
        self._departing[host] = expiry[0]
        log.info("host %s %s; keeping the flows to its VTEP %s for %.0f s in case it "
                 "comes back", host, why, self._vteps[host], self._grace)

    def _cancel_departure(self, host: str) -> None:
        expiry = self._departing.pop(host, None)
        if expiry is not None:
            expiry.cancel()
            log.info("host %s is back in etcd within its grace period", host)

    def _expire(self, host: str, expiry: Cancellable) -> None:
        with self._lock:
            if self._departing.get(host) is not expiry:  # it came back (and maybe left again)
                return
            del self._departing[host]
            self._vteps.pop(host, None)
            log.info("host %s did not come back within %.0f s; dropping the flows to it",
                     host, self._grace)
            self._retouch(host)

    def _adopt(self, host: str) -> bool:
        """(Under the lock.) An endpoint record names `host`, whose key this agent never saw
        (its agent restarting, its key lapsed?). If an earlier run of this agent learnt its VTEP
        from its host record, forward there for the grace period only; never to a VTEP an
        endpoint record names (a forged record would redirect traffic). True if adopted."""
        if self._grace <= 0 or host == self._host or host in self._seen:
            return False
        self._seen.add(host)
        vtep = self._remembered.get(host)
        if vtep is None:
            return False
        self._vteps[host] = vtep
        self._depart(host, why="is not in etcd; forwarding to the VTEP its host record had "
                               "in this agent's last run")
        return True

    def on_endpoints(self, changes: list[Change]) -> None:
        touched: set[str] = set()
        adopted: set[str] = set()
        with self._lock:
            for change in changes:
                touched.add(change.key)
                before = self._forget(change.key, touched)
                if change.value is None:
                    self._rejected.pop(change.key, None)
                    continue
                endpoint = self._verify(change)
                if endpoint is not None:
                    self._remember(change.key, endpoint, touched, before)
                    if self._adopt(endpoint.host):
                        adopted.add(endpoint.host)
            for host in adopted:  # endpoints of this host seen earlier in the batch
                self._touch_host(host, touched)
            self._apply(touched, {self._vteps[h] for h in adopted})

    def _verify(self, change: Change) -> Endpoint | None:
        """(Under the lock.) The endpoint of a put, or None if it was rejected (counted)."""
        assert change.value is not None
        try:
            obj = verify.decode(change.value)
            endpoint = verify.parse_endpoint(change.key, obj, change.create_revision, self._vnis)
            if endpoint.host == self._host:  # the janitor's view, whatever the network says
                self._own[change.key] = verify.own_record(obj)
            facts = self._networks.get(endpoint.network)
            if facts is not None:  # else it waits for its network's record (_refit)
                verify.fits(endpoint, facts)
        except Exception as exc:  # noqa: BLE001 (any shape: skipped and counted)
            self._reject("endpoint", change.key, exc)
            return None
        self._rejected.pop(change.key, None)
        return endpoint

    def _reject(self, kind: str, key: str, exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, Rejected) else "malformed"
        log.warning("ignoring %s record %s: %s", kind, key[:200], str(exc)[:200] or
                    type(exc).__name__)
        self._on_reject(kind, reason)
        if key in self._rejected or len(self._rejected) < SHOWN_REJECTED:
            self._rejected[key] = f"{kind} record rejected ({reason}): {str(exc)[:120]}"

    def on_networks(self, changes: list[Change]) -> None:
        touched: set[str] = set()
        with self._lock:
            for change in changes:
                if change.value is None:
                    log.info("network record %s deleted; its facts stay until a restart", change.key)
                    continue
                try:
                    name, facts = verify.parse_network(change.key, change.value)
                except Exception as exc:  # noqa: BLE001 (the previous facts, if any, stay)
                    self._reject("network", change.key, exc)
                    continue
                self._rejected.pop(change.key, None)
                facts = self._pins.hold(change.key, name, facts)  # rejects a downgrade
                known = self._network_records.get(name)
                created = change.create_revision or (known[0] if known else 0)
                self._network_records[name] = (created, facts)
            self._settle_networks(touched)
            self._apply(touched, set())

    def _settle_networks(self, touched: set[str]) -> None:
        """(Under the lock.) Which network holds each VNI (the first created, like any claim),
        and the endpoints of networks whose facts changed checked again (rare: a scan)."""
        first: dict[int, tuple[int, str]] = {}
        for name, (created, facts) in self._network_records.items():
            if facts.vni not in first or (created, name) < first[facts.vni]:
                first[facts.vni] = (created, name)
        usable = {name: facts for name, (_, facts) in self._network_records.items()
                  if first[facts.vni][1] == name}
        changed = {n for n in usable.keys() | self._networks.keys()
                   if usable.get(n) != self._networks.get(n)}
        for name in self._network_records.keys() - usable.keys() - self._vni_losers:
            vni = self._network_records[name][1].vni
            log.warning("network %s claims VNI %d, which network %s holds; ignoring it",
                        name, vni, first[vni][1])
            self._on_conflict()
        self._vni_losers = self._network_records.keys() - usable.keys()
        self._networks = usable
        for name in changed:
            self._refit(name, touched)

    def _refit(self, network: str, touched: set[str]) -> None:
        facts = self._networks.get(network)
        for key in [k for k, e in self._endpoints.items() if e.network == network]:
            endpoint = self._endpoints[key]
            touched.add(key)
            touched.update(self._claims.remove(key, network, claimed_values(endpoint.ips, endpoint.mac)))
            if facts is None:
                continue  # waits, unclaimed, for a record of its network
            try:
                verify.fits(endpoint, facts)
            except Rejected as exc:
                self._forget(key, touched)
                self._reject("endpoint", key, exc)
                continue
            self._claim(key, endpoint, touched, ())

    def peer_changed(self, host: str) -> None:
        """The host's WireGuard peer came, went or moved (agent/encryption.py)."""
        with self._lock:
            self._retouch(host)

    def _retouch(self, host: str) -> None:
        touched: set[str] = set()
        self._touch_host(host, touched)
        self._apply(touched, set())

    def forget_network(self, network: str) -> None:
        """This host left the network: drop everything learnt about it."""
        with self._lock:
            # A scan, not an index: this happens 30 s after a network's last local container
            # left, and an index by network cost 2 MB at 50,000 endpoints.
            keys = {k for k, e in self._endpoints.items() if e.network == network}
            touched = set(keys)
            for key in keys:
                self._forget(key, touched)
            self._apply(touched, set())

    def problems(self) -> list[str]:
        """Conflicts and rejected records as they stand, for `overlayctl doctor`."""
        with self._lock:
            out = []
            for network, value, claimants, holder in self._claims.conflicts():
                who = ", ".join(f"{k} (host {self._endpoints[k].host}, created at revision "
                                f"{self._endpoints[k].created})" for k in claimants)
                out.append(f"conflict in network {network}: {value} is claimed by {who}; "
                           f"{holder or 'none of them (no live host)'} holds it, others ignored")
            for name in sorted(self._vni_losers):
                facts = self._network_records[name][1]
                out.append(f"conflict: network {name} claims VNI {facts.vni}, which another "
                           "network created earlier holds; its endpoints are ignored")
            out += [f"{key}: {why}" for key, why in sorted(self._rejected.items())]
            return out

    # --- bookkeeping (under the lock) ----------------------------------------------------------

    def _rank(self, key: str) -> tuple[int, int, str]:
        endpoint = self._endpoints[key]
        return (0 if endpoint.host == self._host else 1, endpoint.created, key)

    def _eligible(self, key: str) -> bool:
        endpoint = self._endpoints.get(key)
        return endpoint is not None and (endpoint.host == self._host
                                         or endpoint.host in self._vteps)

    def _remember(self, key: str, endpoint: Endpoint, touched: set[str], before: tuple[str, ...]) -> None:
        self._endpoints[key] = endpoint
        self._by_host.setdefault(endpoint.host, set()).add(key)
        if endpoint.network in self._networks:
            self._claim(key, endpoint, touched, before)

    def _claim(self, key: str, endpoint: Endpoint, touched: set[str], before: tuple[str, ...]) -> None:
        claimed = claimed_values(endpoint.ips, endpoint.mac)
        others, contested = self._claims.add(key, endpoint.network, claimed)
        touched.update(others)
        for value in contested:
            if value in before:
                continue  # the same claim again (an update of the record): not a new conflict
            self._on_conflict()
            holder = self._claims.holder(endpoint.network, value)
            log.warning("conflict in network %s: %s is claimed by %s and by %s; %s holds it "
                        "(local first, then the first created)", endpoint.network, value, key,
                        ", ".join(k for k in others if k != key), holder or "none of them")

    def _forget(self, key: str, touched: set[str]) -> tuple[str, ...]:
        """Drop what is known of `key`; returns what it claimed."""
        self._own.pop(key, None)
        old = self._endpoints.pop(key, None)
        if old is None:
            return ()
        claimed = claimed_values(old.ips, old.mac)
        touched.update(self._claims.remove(key, old.network, claimed))
        keys = self._by_host.get(old.host)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_host[old.host]
        return claimed

    def _remote(self, key: str) -> RemoteEndpoint | None:
        """What the dataplane should hold for this key now: a remote endpoint, or nothing."""
        endpoint = self._endpoints.get(key)
        if endpoint is None or endpoint.host == self._host:
            return None
        vtep = self._vteps.get(endpoint.host)
        facts = self._networks.get(endpoint.network)
        if vtep is not None and facts is not None and facts.encrypted:
            vtep = self._sealed(endpoint.host)  # fail closed (agent/encryption.py)
        if vtep is None or facts is None:
            return None
        if self._claims.contested and not self._claims.wins(key, endpoint.network,
                                                             claimed_values(endpoint.ips, endpoint.mac)):
            return None
        return RemoteEndpoint(endpoint.vni, endpoint.mac, endpoint.ips, vtep)

    def _apply(self, touched: Iterable[str], new_vteps: Iterable[str]) -> None:
        # Under the lock: updates computed from two watches' changes must reach the dataplane
        # in the order the state changed, or a stale one could overwrite a newer one.
        updates = {key: self._remote(key) for key in touched}
        try:
            if new_vteps:
                self._on_new_vteps(set(new_vteps))
            if updates:
                self._dataplane.update_remote(  # with the peers: one change, one push
                    updates, peer_infos(updates, self._endpoints, self._host))
        except Exception:  # the dataplane marks itself for a full push; verify() repairs
            log.exception("could not apply %d remote endpoint changes", len(updates))
