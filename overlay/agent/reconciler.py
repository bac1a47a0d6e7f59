"""From etcd changes to remote endpoints in the dataplane, one key at a time.

The watches (store/watch.py) deliver keyed changes: host records (`on_hosts`) and endpoint
records of the networks this host takes part in (`on_endpoints`). Each change touches only
what depends on that key: an endpoint put or delete becomes one remote endpoint update; a host
change (its lease expired, it registered again, its VTEP moved) becomes updates of that host's
endpoints only, found through an index. The dataplane turns them into one flow bundle per
batch. Nothing here walks the whole cluster.

An endpoint counts only while its host is alive (its leased host key exists), so traffic to a
lost host stops once the lease has expired, and resumes by itself when the host registers again.
"Once" is `host_grace` seconds after the key went: an agent that restarts more slowly than its
lease TTL (a big table to read, a slow VM) lets its key lapse although its switch never stopped
forwarding, and dropping the flows towards it at once would cut every peer off from its
containers for the rest of the restart. If the host registers again within the grace with the
same VTEP, no flow changes at all.

Records are validated before they reach the flow table: whatever is in etcd is written into
OpenFlow text, so a malformed or hostile record (a VNI as a string, a MAC with a comma in it)
is skipped with a warning instead of breaking, or extending, every host's flow table. Records
naming this host are kept whole (`own_records`): they are the janitor's view of what etcd
believes lives here.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import RemoteEndpoint
from overlay.model import VNI_MAX, VNI_MIN
from overlay.store import records as r
from overlay.store.stream import Change

log = logging.getLogger(__name__)

_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class _Endpoint(NamedTuple):
    host: str
    network: str
    vni: int
    mac: str
    ips: tuple[str, ...]


def parse_vtep(value: bytes) -> str:
    """The VTEP of a host record, validated (raises ValueError and friends)."""
    vtep = r.HostRecord.from_json(value).vtep
    return str(ipaddress.IPv4Address(vtep if isinstance(vtep, str) else ""))


def _address(text: str) -> str:
    """The canonical text of the address of "ip/prefix" (what ip_interface(text).ip gives).

    Dotted-quad IPv4 with a plain prefix length, by far the common case, is checked with
    inet_pton, which refuses what ipaddress refuses (leading zeros, octets over 255) and so
    is already canonical; about 15x faster than ipaddress, which was most of the time of
    building the model of 50,000 endpoints at start. Anything else goes through ipaddress."""
    ip, _, prefix = text.partition("/")
    if ":" not in ip and (not prefix or (prefix.isdigit() and int(prefix) <= 32
                                         and prefix == str(int(prefix)))):
        try:
            socket.inet_pton(socket.AF_INET, ip)
            return ip
        except OSError:
            pass
    return str(ipaddress.ip_interface(text).ip)


_decode = json.JSONDecoder().decode


def parse_endpoint(value: bytes, own_host: str | None = None,
                   vnis: dict[int, int] | None = None
                   ) -> tuple[_Endpoint, r.EndpointRecord | None, str | None]:
    """The endpoint's routing facts, validated; the whole record only if it names `own_host`
    (the janitor's view), since a remote endpoint's other fields are never read; and the VTEP
    its host had when it wrote the record (None if the record has none, or a bad one).

    Memory at scale: an agent holds every remote endpoint of its networks (50,000 in the
    benchmark), so what repeats across records is shared rather than held once per record:
    host and network names (sys.intern) and the VNI (one int object per VNI, from `vnis`)."""
    obj = _decode(value.decode())  # json.loads(bytes) also guesses the encoding: slower
    host, network, vni, mac, ips = (obj["host"], obj["network"], obj["vni"], obj["mac"],
                                    obj["ips"])
    if not isinstance(vni, int) or isinstance(vni, bool) or not VNI_MIN <= vni <= VNI_MAX:
        raise ValueError(f"bad vni {vni!r}")
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise ValueError(f"bad mac {mac!r}")
    # No address yet is valid: a DHCP client's record is published before its lease, so that
    # the server's unicast answers to its MAC find this host (overlay/cni/leases.py).
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise ValueError(f"bad ips {ips!r}")
    if not isinstance(host, str) or not isinstance(network, str):
        raise ValueError("bad host or network")
    if vnis is not None:
        vni = vnis.setdefault(vni, vni)
    endpoint = _Endpoint(sys.intern(host), sys.intern(network), vni,
                         mac, tuple(map(_address, ips)))
    vtep = obj.get("vtep")
    if vtep:  # records of older agents have none, or "": no exception to pay for it then
        try:
            socket.inet_pton(socket.AF_INET, vtep)
            vtep = sys.intern(vtep)
        except (OSError, TypeError):
            vtep = None
    else:
        vtep = None
    if host != own_host:
        return endpoint, None, vtep
    return endpoint, r.EndpointRecord.from_json(value), vtep


_BAD = (ValueError, TypeError, KeyError, AttributeError)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _timer(delay: float, call: Callable[[], None]) -> Cancellable:
    timer = threading.Timer(delay, call)
    timer.daemon = True
    timer.start()
    return timer


class Reconciler:
    def __init__(self, *, host: str, dataplane: Dataplane,
                 on_new_vteps: Callable[[set[str]], None] = lambda vteps: None,
                 host_grace: float = 0.0,
                 schedule: Callable[[float, Callable[[], None]], Cancellable] = _timer) -> None:
        self._host = host
        self._dataplane = dataplane
        self._on_new_vteps = on_new_vteps
        self._grace = host_grace
        self._schedule = schedule
        self._lock = threading.Lock()  # watches of several prefixes call in on their threads
        self._vteps: dict[str, str] = {}                  # live host -> VTEP (departing ones too)
        self._departing: dict[str, Cancellable] = {}      # host whose key went -> its expiry
        self._seen: set[str] = set()                      # hosts whose key or VTEP we learnt
        self._endpoints: dict[str, _Endpoint] = {}        # etcd key -> endpoint, any host
        self._by_host: dict[str, set[str]] = {}           # host -> its endpoint keys
        self._own: dict[str, r.EndpointRecord] = {}       # records naming this host
        self._vnis: dict[int, int] = {}                   # one int object per VNI (memory)

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

    def own_records(self) -> list[r.EndpointRecord]:
        with self._lock:
            return list(self._own.values())

    def remote_count(self) -> int:
        with self._lock:
            return sum(len(keys) for h, keys in self._by_host.items()
                       if h != self._host and h in self._vteps)

    # --- changes from the watches --------------------------------------------------------------

    def on_hosts(self, changes: list[Change]) -> None:
        updates: dict[str, RemoteEndpoint | None] = {}
        new_vteps: set[str] = set()
        with self._lock:
            for change in changes:
                host = change.key[len(r.HOSTS):]
                vtep = None
                if change.value is not None:
                    try:
                        vtep = parse_vtep(change.value)
                    except _BAD:
                        log.warning("ignoring malformed host record %s", change.key)
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
                    for key in self._by_host.get(host, ()):
                        updates[key] = self._remote(key)
            self._apply(updates, new_vteps)

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
            self._apply({key: self._remote(key) for key in self._by_host.get(host, ())}, set())

    def _adopt(self, host: str, vtep: str) -> bool:
        """(Under the lock.) An endpoint record names `host`, whose key this agent has never
        seen: most likely this agent started while that host's agent was restarting and its
        key had lapsed (the peers that were running keep forwarding through host_grace; this
        one never knew the VTEP). Forward to the VTEP the record names, for the grace period
        only, as if the key had just gone. True if adopted."""
        if self._grace <= 0 or host == self._host or host in self._seen:
            return False
        self._seen.add(host)
        self._vteps[host] = vtep
        self._depart(host, why="is not in etcd; forwarding to the VTEP its endpoints name")
        return True

    def on_endpoints(self, changes: list[Change]) -> None:
        updates: dict[str, RemoteEndpoint | None] = {}
        adopted: set[str] = set()
        with self._lock:
            for change in changes:
                self._forget(change.key)
                if change.value is not None:
                    try:
                        endpoint, rec, vtep = parse_endpoint(change.value, self._host,
                                                             self._vnis)
                    except _BAD as exc:
                        log.warning("ignoring malformed endpoint record %s: %s", change.key, exc)
                    else:
                        self._remember(change.key, endpoint, rec)
                        if vtep is not None and self._adopt(endpoint.host, vtep):
                            adopted.add(endpoint.host)
                updates[change.key] = self._remote(change.key)
            for host in adopted:  # endpoints of this host seen earlier in the batch
                for key in self._by_host.get(host, ()):
                    updates[key] = self._remote(key)
            self._apply(updates, {self._vteps[h] for h in adopted})

    def forget_network(self, network: str) -> None:
        """This host left the network: drop everything learnt about it."""
        with self._lock:
            # A scan, not an index: this happens 30 s after a network's last local container
            # left, and an index by network cost 2 MB at 50,000 endpoints.
            keys = [k for k, e in self._endpoints.items() if e.network == network]
            for key in keys:
                self._forget(key)
            self._apply(dict.fromkeys(keys), set())

    # --- bookkeeping (under the lock) ----------------------------------------------------------

    def _remember(self, key: str, endpoint: _Endpoint, rec: r.EndpointRecord | None) -> None:
        self._endpoints[key] = endpoint
        self._by_host.setdefault(endpoint.host, set()).add(key)
        if rec is not None:
            self._own[key] = rec

    def _forget(self, key: str) -> None:
        old = self._endpoints.pop(key, None)
        if old is None:
            return
        self._own.pop(key, None)
        keys = self._by_host.get(old.host)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_host[old.host]

    def _remote(self, key: str) -> RemoteEndpoint | None:
        """What the dataplane should hold for this key now: a remote endpoint, or nothing."""
        endpoint = self._endpoints.get(key)
        if endpoint is None or endpoint.host == self._host:
            return None
        vtep = self._vteps.get(endpoint.host)
        if vtep is None:
            return None
        return RemoteEndpoint(endpoint.vni, endpoint.mac, endpoint.ips, vtep)

    def _apply(self, updates: dict[str, RemoteEndpoint | None], new_vteps: Iterable[str]) -> None:
        # Under the lock: updates computed from two watches' changes must reach the dataplane
        # in the order the state changed, or a stale one could overwrite a newer one.
        try:
            if new_vteps:
                self._on_new_vteps(set(new_vteps))
            if updates:
                self._dataplane.update_remote(updates)
        except Exception:  # the dataplane marks itself for a full push; verify() repairs
            log.exception("could not apply %d remote endpoint changes", len(updates))
