"""The agent's one etcd client: typed verbs over the key layout in records.py.

Every call is bounded by a timeout, and "etcd is not reachable" always surfaces as
CniError(TRY_AGAIN_LATER) so that a runtime retries instead of giving up. The host lease is kept
alive by a thread this class owns (lease.py); if the lease is lost (etcd was down longer than the
TTL), the thread takes a new one and writes the host record again.

With `ca` (and `cert`/`key` for client-certificate authentication) every endpoint is reached over
TLS, whatever scheme its URL says; register_host then tells an etcd that refuses our TLS
(tls.TlsRejected) from one that cannot be reached (CniError TRY_AGAIN_LATER).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import grpc
import pyetcd
import pyetcd.exceptions
import pyetcd.utils

from overlay.errors import CniError, Code
from overlay.model import Address
from overlay.store import ownership, tls
from overlay.store import records as r
from overlay.store.lease import HostLease
from overlay.store.paging import Item, OnPage, read_range

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_UNAVAILABLE = (pyetcd.exceptions.ConnectionFailedError, pyetcd.exceptions.ConnectionTimeoutError,
                pyetcd.exceptions.NoServerAvailableError)
RETRY_AFTER = 0.2  # seconds an endpoint stays benched after a failure
# gRPC backs off reconnecting exponentially, up to two minutes by default: after a 30 s etcd
# outage the agent would stay disconnected for tens of seconds more, long enough for the host
# leases (restored with their full TTL when etcd restarts) to expire unrefreshed, and for every
# other host to drop its tunnels to us. Reconnect within a second instead; keepalives notice a
# silently dead connection (etcd allows pings every 5 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Reads are paged (PAGE keys per response), but one record may be as large as etcd allows
    # (1.5 MiB by default): leave room for a page of large ones rather than fail the read.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Keys per range response: ~1.6 MB of endpoint records, far below the receive limit above.
# Not smaller: etcd 3.4 collects every revision of the whole range for each page and only
# then cuts it to the limit, so reading N keys in pages of P costs it N * N / P. Measured with
# 50,000 endpoint records: 500 per page 1.7-3.8 s, 2,000 1.1 s, 5,000 0.7 s.
PAGE = 5000


def _attempts(members: int) -> int:
    """How many times one call is tried before etcd counts as unreachable.

    pyetcd benches the endpoint *in use* when a call fails, and that is shared by every thread
    of the agent: a call that was sent to the member that just died, and fails after another
    thread has already moved on to a healthy member, benches the healthy one. With one member
    down, all of them can be benched for RETRY_AFTER at once and pyetcd then refuses every call
    (NoServerAvailableError) though two members are serving. So with several members each one
    gets two chances, and a call that finds all of them benched waits out the bench (see
    etcd_call). A single member gets one: nothing to fail over to, and "try again later"
    should come at once. (A call that was never sent, because another thread's failure had
    benched the member, is not an attempt: see etcd_call.)"""
    return 1 if members <= 1 else 2 * members


def etcd_call(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorates a Store verb (first argument: the Store): retried on another member, and
    etcd's failures said as CniError (TRY_AGAIN_LATER unreachable, STORE_FAILURE refused)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0] if args and isinstance(args[0], Store) else None
        attempts = _attempts(len(store._addresses) if store is not None else 1)
        waited = False
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except _UNAVAILABLE as exc:
                attempt += 1
                # NoServerAvailableError: every member is benched, so this call reached no
                # etcd at all; another thread's failure put it there (after a blip, say an
                # ovs-vswitchd restart taking the underlay address away for a moment). Wait
                # the bench out and try: answering "unreachable" to a call never sent is
                # wrong once etcd is back. A single member waits once, a cluster each time.
                benched = isinstance(exc, pyetcd.exceptions.NoServerAvailableError)
                if attempt < attempts or (benched and not waited):
                    if benched:
                        time.sleep(RETRY_AFTER)
                        waited = True
                    continue
                if store is not None:
                    store.on_error(fn.__name__.lstrip("_"))
                raise CniError(Code.TRY_AGAIN_LATER, "etcd is not reachable; try again later",
                               f"{type(exc).__name__}: {exc}") from None
            except (pyetcd.exceptions.Etcd3Exception, grpc.RpcError) as exc:
                if store is not None:
                    store.on_error(fn.__name__.lstrip("_"))
                raise CniError(Code.STORE_FAILURE, "etcd refused the request",
                               _refusal(store, exc)) from None
    return wrapper


def _refusal(store: Store | None, exc: Exception) -> str:
    """Why etcd refused: for "permission denied", in words an operator can act on."""
    code = getattr(exc, "code", None)
    if not (callable(code) and code() is grpc.StatusCode.PERMISSION_DENIED):
        return str(exc)
    cert = store._tls.cert if store is not None else ""
    who = (f"the etcd user named by the CN of our client certificate (etcd_cert {cert})" if cert
           else "this client (no client certificate, so no etcd user)")
    return (f"etcdserver: permission denied: etcd's authentication is on, and {who} does not "
            f"exist or has no role that allows this on {r.ROOT} (`etcdctl user get <CN>` as "
            "etcd's root; docs/etcd-auth.md)")


def parse_endpoint(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else "http://" + url)
    return parsed.hostname or "127.0.0.1", parsed.port or 2379


class Store:
    def __init__(self, *, endpoints: list[str], timeout: float = 3.0, ca: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 on_error: Callable[[str], None] = lambda operation: None) -> None:
        self.on_error = on_error  # told the name of every request that failed (metrics)
        self._tls = tls.TlsFiles(ca or "", cert or "", key or "")
        tls.check_files(self._tls)  # raises TlsConfigError naming the file and the problem
        creds = self._tls.credentials() if self._tls.enabled else None
        self._addresses = [parse_endpoint(e) for e in endpoints]
        self._timeout = timeout
        # pyetcd benches an endpoint for `time_retry` seconds (300 by default) after one failed
        # call, and a single-endpoint client then refuses every call until that time is up. We
        # want the next call after an outage to try again at once.
        eps = [pyetcd.Endpoint(host, port, secure=creds is not None, creds=creds,
                               time_retry=RETRY_AFTER, opts=CHANNEL_OPTIONS)
               for host, port in self._addresses]
        self._client: Any = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout,
                                                            failover=True)
        self._tx = self._client.transactions
        self._host_lease = HostLease(self.register_host, self._put_back)

    @property
    def client(self) -> Any:
        return self._client

    def close(self) -> None:
        self._host_lease.close()
        self._client.close()

    # --- hosts -------------------------------------------------------------------------------

    def tls_rejection(self) -> str | None:
        """Why etcd refuses our TLS (asked of etcd itself), or None: no TLS, or merely unreachable."""
        return tls.rejection(self._tls, self._addresses, self._timeout)

    def register_host(self, rec: r.HostRecord, ttl: int) -> None:
        """Write the host record under a fresh lease and keep the lease alive until close().

        Raises CniError(TRY_AGAIN_LATER) while etcd cannot be reached, tls.TlsRejected when
        it answers but refuses our TLS (wrong CA, certificate not accepted, no TLS at all), and
        HostNameTaken when another live agent installation holds the name (ownership.py).
        """
        try:
            self._register_host(rec, ttl)
        except CniError as err:
            if err.code is Code.TRY_AGAIN_LATER and self._tls.enabled:
                reason = self.tls_rejection()
                if reason is not None:
                    raise tls.TlsRejected(reason) from None
            raise

    @etcd_call
    def _register_host(self, rec: r.HostRecord, ttl: int) -> None:
        lease = self._client.lease(ttl)
        try:
            ownership.claim_host(self._client, rec, lease)
        except BaseException:
            try:
                lease.revoke()  # holds nothing; do not leave it to expire
            except Exception:  # best effort: it expires anyway
                pass
            raise
        self._host_lease.hold(lease, rec, ttl)

    def update_host(self, rec: r.HostRecord) -> None:
        """Our record changes (a WireGuard key rotation): the lease keeper writes it now."""
        self._host_lease.update(rec)

    def host_changed(self, key: str, value: bytes | None) -> None:
        """A change the hosts watch saw: our record not as we wrote it is put back at once."""
        self._host_lease.changed(key, value)

    @etcd_call
    def _put_back(self, rec: r.HostRecord) -> bool:
        """Write our host record again if it is not as we wrote it (value and lease)."""
        return self._host_lease.put_back(self._client, rec)

    # --- networks ----------------------------------------------------------------------------

    @etcd_call
    def ensure_network(self, rec: r.NetworkRecord) -> bool:
        """Record the network and claim its VNI, or fail if either is taken differently.

        Returns True if this call created the network (the caller may undo that with
        drop_network_if_unused when its ADD fails).
        """
        nkey, vkey = r.network_key(rec.name), r.vni_key(rec.vni)
        tx = self._tx
        # One round trip for every ADD: when the records exist (all but a network's first
        # ADD), the failure branch reads them for the comparison below.
        ok, found = self._client.transaction(
            compare=[tx.version(nkey) == 0, tx.version(vkey) == 0],
            success=[tx.put(nkey, rec.to_json()), tx.put(vkey, rec.name)],
            failure=[tx.get(nkey), tx.get(vkey)])
        if ok:
            return True
        existing = found[0][0][0] if found and found[0] else None
        owner = found[1][0][0] if len(found) > 1 and found[1] else None
        conflict = "" if existing is None else r.network_conflict(
            r.NetworkRecord.from_json(existing), rec)
        if conflict:
            raise CniError(Code.NETWORK_CONFLICT, conflict)
        if owner is not None and owner.decode() != rec.name:
            raise CniError(Code.NETWORK_CONFLICT,
                           f"vxlanID {rec.vni} already belongs to network {owner.decode()!r}")
        if existing is None or owner is None:  # half-written by an older version: repair it
            self._client.put(nkey, rec.to_json())
            self._client.put(vkey, rec.name)
        return False

    @etcd_call
    def drop_network_if_unused(self, rec: r.NetworkRecord) -> None:
        """Undo ensure_network: delete network and VNI records if no endpoint uses them."""
        if self._client.get_prefix_response(f"{r.ENDPOINTS}{rec.name}/", count_only=True).count:
            return
        tx = self._tx
        self._client.transaction(
            compare=[tx.value(r.network_key(rec.name)) == rec.to_json(),
                     tx.value(r.vni_key(rec.vni)) == rec.name],
            success=[tx.delete(r.network_key(rec.name)), tx.delete(r.vni_key(rec.vni))],
            failure=[])

    @etcd_call
    def ping(self) -> None:
        """One cheap read: raises CniError(TRY_AGAIN_LATER) when etcd cannot be reached."""
        self._client.get(r.ROOT + "ping")

    # --- endpoints ---------------------------------------------------------------------------

    @etcd_call
    def put_endpoint(self, rec: r.EndpointRecord) -> None:
        """Create the record, or replace ours; CniError(ALREADY_ATTACHED) naming the host if
        another host holds the key (ownership.py)."""
        ownership.put_endpoint(self._client, rec.key, rec.to_json(), rec.host,
                               f"container {rec.container_id} interface {rec.ifname}")

    @etcd_call
    def get_endpoint(self, network: str, container_id: str, ifname: str) -> r.EndpointRecord | None:
        value, _ = self._client.get(r.endpoint_key(network, container_id, ifname))
        return None if value is None else r.EndpointRecord.from_json(value)

    @etcd_call
    def set_endpoint_labels(self, network: str, container_id: str, ifname: str,
                            labels: dict[str, str], *, host: str, netns: str) -> bool:
        """Replace the record's labels if it is still that attachment (ownership.py)."""
        return ownership.set_labels(self._client, r.endpoint_key(network, container_id, ifname),
                                    labels, host=host, netns=netns)

    @etcd_call
    def delete_endpoint(self, network: str, container_id: str, ifname: str, *,
                        host: str) -> str | None:
        """Delete the record if it names `host` (idempotent). Returns None when it is gone,
        else the host it names, whose record stays (ownership.py)."""
        return ownership.delete_endpoint(self._client,
                                         r.endpoint_key(network, container_id, ifname), host)

    def all_endpoints(self) -> list[r.EndpointRecord]:
        return self.endpoints("")

    def endpoints(self, network: str) -> list[r.EndpointRecord]:
        """Endpoint records of one network ("" for all networks)."""
        prefix = f"{r.ENDPOINTS}{network}/" if network else r.ENDPOINTS
        return r.endpoint_records((i.key, i.value) for i in self.read_prefix(prefix)[1])

    def endpoints_outside(self, networks: set[str], *, page: int = PAGE
                          ) -> list[r.EndpointRecord]:
        """Endpoint records of every network except `networks`, without reading theirs.

        The agent's start-up janitor needs this host's records in every network; those of the
        networks it follows it has from their watches already, and reading the whole
        endpoints/ prefix again cost seconds at 50,000 endpoints. The keys of the other
        networks are the gaps between the followed networks' prefixes (names hold no '/', so
        no prefix contains another), each read page by page like a prefix."""
        bounds = sorted(f"{r.ENDPOINTS}{n}/".encode() for n in networks)
        start, items = r.ENDPOINTS.encode(), []
        for prefix in bounds:
            if start < prefix:
                items += self._read_range(start, prefix, page)
            start = pyetcd.utils.prefix_range_end(prefix)
        items += self._read_range(start, pyetcd.utils.prefix_range_end(r.ENDPOINTS.encode()),
                                  page)
        return r.endpoint_records((i.key, i.value) for i in items)

    # --- IP allocations ----------------------------------------------------------------------

    def allocations(self, network: str) -> dict[Address, r.Holder]:
        prefix = r.ipam_prefix(network)
        out: dict[Address, r.Holder] = {}
        for item in self.read_prefix(prefix)[1]:
            try:
                ip = ipaddress.ip_address(item.key[len(prefix):])
            except ValueError:
                continue  # not an allocation key: not ours to interpret
            out[ip] = r.Holder.parse(item.value)
        return out

    @etcd_call
    def allocation(self, network: str, ip: Address) -> r.Holder | None:
        value, _ = self._client.get(r.ipam_prefix(network) + str(ip))
        return None if value is None else r.Holder.parse(value)

    @etcd_call
    def claim_ip(self, network: str, ip: Address, holder: r.Holder) -> bool:
        key = r.ipam_prefix(network) + str(ip)
        ok, _ = self._client.transaction(compare=[self._tx.version(key) == 0],
                                         success=[self._tx.put(key, holder.to_json())], failure=[])
        return bool(ok)

    @etcd_call
    def release_ip(self, network: str, ip: Address, holder: r.Holder) -> None:
        key = r.ipam_prefix(network) + str(ip)
        # Only the holder may free an address: a stale DEL must not free a reused one.
        self._client.transaction(compare=[self._tx.value(key) == holder.to_json()],
                                 success=[self._tx.delete(key)], failure=[])

    # --- reading and watching ----------------------------------------------------------------

    def snapshot(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        """All keys under `prefix` and the revision they were read at (read in pages)."""
        revision, items = self.read_prefix(prefix)
        return revision, {item.key: item.value for item in items}

    def read_prefix(self, prefix: str, *, page: int = PAGE,
                    on_page: OnPage | None = None) -> tuple[int, list[Item]]:
        """Every key under `prefix`, as of one revision, read `page` keys per request
        (store/paging.py; `on_page` is handed each page as it arrives).

        No single response holds the whole prefix: a cluster's endpoints can be tens of MB. The
        first page fixes the revision and every later page is read at it, so the result is one
        consistent snapshot; if etcd compacts that revision away mid-read, start over (pages
        already handed to `on_page` are handed again: a consumer must take repeats).
        """
        for attempt in range(3):
            try:
                return self._read_pages(prefix, page, on_page)
            except CniError as err:
                if attempt == 2 or err.code is Code.TRY_AGAIN_LATER:
                    raise
                log.info("paged read of %s restarted (%s)", prefix, err)
        raise AssertionError("unreachable")

    @etcd_call
    def _read_range(self, start: bytes, end: bytes, page: int) -> list[Item]:
        """Keys in [start, end), paged as read_prefix pages (each page at its own revision:
        for the janitor, which checks every record against the host anyway)."""
        return read_range(self._client, start, end, page, one_revision=False)[1]

    @etcd_call
    def _read_pages(self, prefix: str, page: int,
                    on_page: OnPage | None) -> tuple[int, list[Item]]:
        return read_range(self._client, prefix.encode(),
                          pyetcd.utils.prefix_range_end(prefix.encode()), page,
                          one_revision=True, on_page=on_page)

    @etcd_call
    def count(self, prefix: str) -> tuple[int, int]:
        """(keys under `prefix`, etcd's current revision): a probe of a few bytes."""
        resp = self._client.get_prefix_response(prefix, count_only=True)
        return int(resp.count), int(resp.header.revision)

    def channel(self) -> Any:
        """The gRPC channel to the member in use (watch streams are opened on it)."""
        return self._client.channel
