"""The one place that follows etcd: a paged snapshot, then every change, as keyed deltas.

A PrefixWatch hands its consumer lists of `Change`s (key, value or None for a delete, mod
revision):

- first the snapshot, as one list of puts, read in pages (no response holds the prefix);
- then the events of every watch response, in order. All events of one revision arrive in one
  response and are passed on together: a transaction, a DeleteRange (`etcdctl del --prefix`)
  and the keys of a revoked lease each carry many events with the same revision, and every one
  of them counts;
- after a resync, the difference between what it had and a fresh snapshot, found by comparing
  each key's mod revision and a digest of its value, never by the global revision alone.

It keeps per key only its mod revision and the crc32 of its value (packed in one int): the
consumer keeps what it parsed.

Liveness and drift, without reading the prefix again. Every `probe_interval` seconds:
- a progress request goes down the stream. etcd answers it at once on a live stream; a stream
  that stays silent until the next probe is dead (seen when the etcd member it was attached to
  stopped): it is reopened from our revision, which costs nothing if etcd still has the history;
- a count-only range tells how many keys the prefix has now. If that differs from ours on two
  probes in a row while our watch brought nothing in between, an event was lost: resync.
Both answers are a few dozen bytes, whatever the size of the prefix. Compaction past our
revision (etcd says so when the watch is reopened) also resyncs.

Replays are harmless: a reopened watch starts at the last revision we applied (not the next
one), in case a response was cut short, and a change equal to what we know is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable

from overlay.errors import CniError
from overlay.store.etcd import Store
from overlay.store.paging import Item
from overlay.store.stream import Change, Compacted, WatchStream

log = logging.getLogger(__name__)

OnChanges = Callable[[list[Change]], None]


class WatchObserver:
    """What a watch tells its observer (the agent's metrics): no-ops by default."""

    def applied(self, revision: int) -> None:
        """Every event up to `revision` has been handed to the consumer."""

    def resynced(self, reason: str) -> None:
        """A snapshot was read: "start", "compacted" or "drift"."""


def _seen(mod_revision: int, value: bytes) -> int:
    """What we remember of a key: its mod revision and the crc32 of its value, in one int.

    One int rather than a (revision, crc) tuple of two: at 50,000 keys per prefix the tuple
    and its second int cost about 4 MB more."""
    return mod_revision << 32 | zlib.crc32(value)


class PrefixWatch:
    def __init__(self, *, store: Store, prefix: str, on_changes: OnChanges,
                 retry_interval: float = 1.0, probe_interval: float = 5.0,
                 observer: WatchObserver | None = None) -> None:
        self._store = store
        self._observer = observer or WatchObserver()
        self._resync_reason = "start"
        self._prefix = prefix
        self._on_changes = on_changes
        self._retry = retry_interval
        self._probe_interval = probe_interval
        self._known: dict[str, int] = {}  # key -> _seen(mod revision, value)
        self._revision = 0                             # every event up to here is applied
        self._lock = threading.Lock()                  # _known, _revision and _stream
        self._stream: WatchStream | None = None
        self._resync_wanted = False
        self._suspect: int | None = None  # our revision at a probe that found counts differing
        self._synced = threading.Event()
        self._stop = threading.Event()
        self.resyncs = 0  # after the first snapshot: each one repaired something or recovered
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)
        self._prober = threading.Thread(target=self._probe_loop, name=f"probe {prefix}",
                                        daemon=True)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def revision(self) -> int:
        return self._revision

    def __len__(self) -> int:
        return len(self._known)

    def start(self) -> None:
        self._thread.start()
        self._prober.start()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        for thread in (self._thread, self._prober):
            if thread.is_alive():
                thread.join(timeout=5)

    # --- following -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._synced.is_set() or self._resync_wanted:
                    self._resync()
                stream = WatchStream(channel=self._store.channel(), prefix=self._prefix,
                                     start_revision=self._revision)
                with self._lock:
                    self._stream = stream
                for batch in stream.batches():
                    self._apply(batch)
            except Compacted as exc:
                log.warning("watch on %s: %s; resyncing by snapshot", self._prefix, exc)
                self._resync_wanted, self._resync_reason = True, "compacted"
            except Exception as exc:  # etcd down, stream broken or closed by the prober
                if self._stop.is_set():
                    break
                if not self._resync_wanted:
                    log.warning("watch on %s broke (%s); resuming from revision %d",
                                self._prefix, _short(exc), self._revision)
                    self._failover()
                    self._stop.wait(self._retry)
            finally:
                self._close_stream()

    def _failover(self) -> None:
        try:  # one plain call: the client moves to another member if this one is gone
            self._store.ping()
        except CniError:
            pass

    def _apply(self, batch: list[Change]) -> None:
        changes = []
        with self._lock:
            for change in batch:
                if change.value is None:
                    if self._known.pop(change.key, None) is None:
                        continue
                else:
                    seen = _seen(change.mod_revision, change.value)
                    if self._known.get(change.key) == seen:
                        continue
                    self._known[change.key] = seen
                changes.append(change)
            self._revision = max([self._revision, *(c.mod_revision for c in batch)])
        if changes:
            self._on_changes(changes)
        self._observer.applied(self._revision)

    def _resync(self) -> None:
        started = time.monotonic()
        first = not self._synced.is_set()
        handing = [0.0]  # seconds spent in the consumer while the pages came in
        # The first snapshot goes to the consumer page by page as it is read, while etcd
        # reads the next page (store/paging.py): a restarted agent builds its model of 50,000
        # endpoints meanwhile instead of afterwards. Nothing is known yet, so every key is a
        # put; a page handed again (the read restarted) is dropped as known below, and keys
        # that were in an abandoned attempt but not in the final snapshot are deleted by the
        # comparison after the read. Later resyncs compare the whole snapshot first.
        revision, items = self._store.read_prefix(
            self._prefix, on_page=(lambda page: self._hand_page(page, handing)) if first else None)
        read = time.monotonic()
        with self._lock:
            if first and len(self._known) == len(items):
                # Every key was handed over with its page, and none is left from an abandoned
                # attempt (_known holds the snapshot's keys and no others): nothing to compare.
                changes = []
            else:
                fresh = {item.key: _seen(item.mod_revision, item.value) for item in items}
                changes = [Change(item.key, item.value, item.mod_revision, item.create_revision)
                           for item in items if self._known.get(item.key) != fresh[item.key]]
                changes += [Change(key, None, revision)
                            for key in self._known.keys() - fresh.keys()]
                self._known = fresh
            self._revision = revision
            self._resync_wanted, self._suspect = False, None
        if not first:
            self.resyncs += 1
            log.warning("resynced %s at revision %d: %d keys differed from etcd",
                        self._prefix, revision, len(changes))
        if changes or first:
            self._on_changes(changes)
        if first:  # what a restart at scale spends its time on
            log.info("read %s: %d keys at revision %d in %.2f s (%.2f s of it handing pages "
                     "over), the rest handed over in %.2f s", self._prefix, len(items),
                     revision, read - started, handing[0], time.monotonic() - read)
        self._observer.resynced(self._resync_reason)
        self._observer.applied(revision)
        self._synced.set()

    def _hand_page(self, page: list[Item], handing: list[float]) -> None:
        """One page of the first snapshot to the consumer: the keys it does not know yet."""
        started = time.monotonic()
        with self._lock:
            changes = []
            for item in page:
                seen = _seen(item.mod_revision, item.value)
                if self._known.get(item.key) != seen:
                    self._known[item.key] = seen
                    changes.append(Change(item.key, item.value, item.mod_revision,
                                          item.create_revision))
        if changes:
            self._on_changes(changes)
        handing[0] += time.monotonic() - started

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    # --- probing -------------------------------------------------------------------------------

    def _probe_loop(self) -> None:
        asked_at: float | None = None  # when a progress request went out unanswered so far
        while not self._stop.wait(self._probe_interval):
            with self._lock:
                stream = self._stream
            if stream is None or not self._synced.is_set():
                asked_at = None
                continue
            if asked_at is not None and stream.last_heard < asked_at:
                log.warning("watch on %s did not answer a progress request in %.0fs; reopening "
                            "it from revision %d", self._prefix, time.monotonic() - asked_at,
                            self._revision)
                asked_at = None
                self._close_stream()
                continue
            asked_at = time.monotonic()
            stream.request_progress()
            self._check_count()

    def _check_count(self) -> None:
        try:
            count, _ = self._store.count(self._prefix)
        except CniError:
            return  # etcd unreachable: the watch says so itself
        with self._lock:
            ours, revision = len(self._known), self._revision
            if count == ours:
                self._suspect = None
                return
            if self._suspect != revision:  # perhaps events in flight: look again next time
                self._suspect = revision
                return
        log.warning("watch on %s: etcd has %d keys, we have %d, and no event came in %.0fs; "
                    "resyncing", self._prefix, count, ours, self._probe_interval)
        self._resync_wanted, self._resync_reason = True, "drift"
        self._close_stream()


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
