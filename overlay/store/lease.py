"""Our host record under an etcd lease, and the thread that keeps both alive.

The Store (etcd.py) writes the record under a fresh lease (register_host) and hands both here;
from then on a thread refreshes the lease and puts the record back when someone else changed or
deleted it. If the lease is lost (etcd was down longer than the TTL), the thread registers the
host again through the Store, which takes a new lease and writes the record again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from overlay.errors import CniError, Code
from overlay.store import records as r
from overlay.store import tls
from overlay.store.ownership import HostNameTaken

log = logging.getLogger(__name__)

PUT_BACK_GAP = 1.0  # seconds at least between two put-backs of our host record


class HostLease:
    """The lease our host record is written under, and its keeper thread.

    `register` writes the record under a new lease and calls hold() (Store.register_host);
    `put_back` is put_back() with the Store's error translation (Store._put_back)."""

    def __init__(self, register: Callable[[r.HostRecord, int], None],
                 put_back: Callable[[r.HostRecord], bool]) -> None:
        self._register = register
        self._put_back = put_back
        self.lease: Any = None
        self.host: r.HostRecord | None = None  # ours, once registered
        self.wake = threading.Event()  # the host watch saw our record changed (changed)
        self.stop = threading.Event()
        self.keeper: threading.Thread | None = None

    def hold(self, lease: Any, rec: r.HostRecord, ttl: int) -> None:
        """`rec` is written under `lease`: keep them alive until close()."""
        self.lease = lease  # only once the record is really written under it
        self.host = rec
        if self.keeper is None:
            self.keeper = threading.Thread(target=self._keep_alive, args=(rec, ttl),
                                           name="etcd-lease", daemon=True)
            self.keeper.start()

    def update(self, rec: r.HostRecord) -> None:
        """From now on `rec` is our record: written at once by the keeper, put back as ever."""
        self.host = rec
        self.wake.set()

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        if self.keeper:
            self.keeper.join(timeout=5)

    def changed(self, key: str, value: bytes | None) -> None:
        """A change the hosts watch saw: wake the lease thread if it is our record and not as
        we wrote it, so that it is put back at once rather than at the next check."""
        rec = self.host
        if rec is not None and key == r.host_key(rec.host) and value != rec.to_json().encode():
            self.wake.set()

    def _keep_alive(self, rec: r.HostRecord, ttl: int) -> None:
        # A record someone else changed or deleted must be back within ttl / 3 (issue 15): the
        # hosts watch wakes us at once (host_changed); every ttl / 4 we look anyway, in case
        # the watch is down. Put-backs are at least PUT_BACK_GAP apart, so that two agents
        # that both believe they hold the name (ownership.py refuses that at start, but etcd
        # may have lost the first one's record) do not keep etcd busy.
        refreshed = 0.0
        while not self.stop.is_set():
            self.wake.wait(ttl / 4)
            self.wake.clear()
            if self.stop.is_set():
                return
            try:
                if self.lease is None:
                    raise CniError(Code.TRY_AGAIN_LATER, "no lease")
                if time.monotonic() - refreshed >= ttl / 3:
                    if self.lease.refresh()[0].TTL <= 0:  # expired while etcd was unreachable
                        raise CniError(Code.TRY_AGAIN_LATER, "lease expired")
                    refreshed = time.monotonic()
                rec = self.host or rec  # a key rotation replaced it (Store.update_host)
                if self._put_back(rec):
                    self.stop.wait(PUT_BACK_GAP)
            except Exception as exc:  # keep trying: the lease thread must outlive etcd outages
                log.warning("host lease refresh failed (%s); registering again", exc)
                try:
                    self.lease = None
                    self._register(self.host or rec, ttl)
                    refreshed = time.monotonic()
                except (CniError, tls.TlsRejected, HostNameTaken) as again:
                    log.warning("host registration failed: %s", again)

    def put_back(self, client: Any, rec: r.HostRecord) -> bool:
        """Write our host record again if it is not as we wrote it (value and lease)."""
        key, mine = r.host_key(rec.host), rec.to_json()
        value, meta = client.get(key)
        if value is not None and value.decode(errors="replace") == mine and \
                meta.lease_id == self.lease.id:
            return False
        log.warning("host record %s was %s by someone else; putting it back", key,
                    "deleted" if value is None else f"changed to {value[:200]!r}")
        client.put(key, mine, lease=self.lease)
        return True
