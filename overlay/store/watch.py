"""The one place that follows etcd: snapshot, then watch from the snapshot's revision.

A PrefixMirror keeps an in-memory copy of every key under a prefix and calls `on_change` with
a copy of it after each change. Consumers are therefore level-triggered: they look at the whole
current state, never at individual events, so a missed or repeated event cannot leave them
wrong. After a disconnect the watch resumes from the last revision seen; if etcd compacted past
it, the mirror takes a fresh snapshot and replaces its contents (the consumer sees the diff as
one change).

A watch stream can also go quiet without an error: seen when the etcd member it was attached
to stopped, in a 3-member cluster. So a second thread compares the mirror with a fresh
snapshot every `verify_interval` seconds; on any difference it installs the snapshot and
restarts the watch from the snapshot's revision. Level-triggered consumers see that as one
more change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pyetcd.events
import pyetcd.exceptions

from overlay.store.etcd import Store

log = logging.getLogger(__name__)

OnChange = Callable[[dict[str, bytes]], None]


class PrefixMirror:
    def __init__(self, *, store: Store, prefix: str, on_change: OnChange,
                 ignore: tuple[str, ...] = (), retry_interval: float = 1.0,
                 verify_interval: float = 3.0) -> None:
        self._store = store
        self._prefix = prefix
        self._on_change = on_change
        self._ignore = ignore
        self._retry = retry_interval
        self._state: dict[str, bytes] = {}
        self._revision: int | None = None
        self._stop = threading.Event()
        self._cancel: Callable[[], None] | None = None
        self._synced = threading.Event()
        self._lock = threading.Lock()  # state, revision and on_change: one writer at a time
        self._verify_interval = verify_interval
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)
        self._verifier = threading.Thread(target=self._verify, name=f"verify {prefix}",
                                          daemon=True)

    @property
    def revision(self) -> int | None:
        return self._revision

    def start(self) -> None:
        self._thread.start()
        self._verifier.start()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._cancel:
            self._cancel()
        self._thread.join(timeout=5)
        self._verifier.join(timeout=5)

    def _wanted(self, key: str) -> bool:
        return not key.startswith(self._ignore)

    def _resync(self) -> None:
        revision, snap = self._store.snapshot(self._prefix)
        with self._lock:
            self._state = {k: v for k, v in snap.items() if self._wanted(k)}
            self._revision = revision
            self._on_change(dict(self._state))
        self._synced.set()

    def _verify(self) -> None:
        while not self._stop.wait(self._verify_interval):
            if not self._synced.is_set():
                continue
            try:
                revision, snap = self._store.snapshot(self._prefix)
            except Exception:  # etcd unreachable: the watch thread reports that
                continue
            wanted = {k: v for k, v in snap.items() if self._wanted(k)}
            with self._lock:
                if wanted == self._state or (self._revision or 0) >= revision:
                    continue
                log.warning("watch on %s fell behind (revision %s, etcd at %s); resyncing",
                            self._prefix, self._revision, revision)
                self._state, self._revision = wanted, revision
                self._on_change(dict(wanted))
                cancel = self._cancel
            if cancel is not None:  # the watch thread starts again from the new revision
                try:
                    cancel()
                except Exception:
                    pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._revision is None:
                    self._resync()
                assert self._revision is not None
                events, self._cancel = self._store.watch(self._prefix, self._revision + 1)
                for event in events:
                    if self._stop.is_set():
                        break
                    self._apply(event)
            except pyetcd.exceptions.RevisionCompactedError:
                log.warning("etcd compacted past revision %s; resyncing by snapshot", self._revision)
                self._revision = None
            except Exception as exc:  # etcd down, stream broken: retry from the last revision
                if not self._stop.is_set():
                    log.warning("watch on %s broke (%s); retrying", self._prefix, exc)
                    self._stop.wait(self._retry)

    def _apply(self, event: pyetcd.events.Event) -> None:
        key = event.key.decode(errors="replace")
        with self._lock:
            if self._revision is not None and event.mod_revision <= self._revision:
                return  # already part of a snapshot the verifier installed
            self._revision = event.mod_revision
            if not self._wanted(key):
                return
            if isinstance(event, pyetcd.events.DeleteEvent):
                if self._state.pop(key, None) is None:
                    return
            else:
                if self._state.get(key) == event.value:
                    return
                self._state[key] = event.value
            self._on_change(dict(self._state))
