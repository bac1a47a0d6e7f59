"""Which networks this host follows in etcd: the ones it has local endpoints in.

A host with no container in a network has no use for that network's endpoints and should not
pay for its churn in memory, CPU or etcd traffic. So each network with a local endpoint has
its own PrefixWatch on `endpoints/<network>/`:

- the first ADD in a network starts it and waits (bounded) for its first snapshot, so the new
  container reaches the other hosts' containers from its first packet;
- the agent's periodic sweep starts what is missing (endpoints recovered from OVSDB at start,
  a watch that failed to start) and stops a watch once its network has had no local endpoint
  for `grace` seconds, so a container that is replaced does not make the host read the whole
  network again.

Starting and stopping happen under one lock, so a join never races a stop of the same network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from overlay.agent.reconciler import Reconciler
from overlay.store import records as r
from overlay.store.etcd import Store
from overlay.store.watch import PrefixWatch, WatchObserver

log = logging.getLogger(__name__)


class NetworkWatches:
    def __init__(self, *, store: Store, reconciler: Reconciler,
                 local_networks: Callable[[], set[str]], grace: float = 30.0,
                 sync_timeout: float = 10.0, probe_interval: float = 5.0,
                 observer: WatchObserver | None = None) -> None:
        self._store = store
        self._observer = observer
        self._reconciler = reconciler
        self._local_networks = local_networks
        self._grace = grace
        self._sync_timeout = sync_timeout
        self._probe_interval = probe_interval
        self._lock = threading.Lock()
        self._watches: dict[str, PrefixWatch] = {}
        self._idle_since: dict[str, float] = {}

    def join(self, network: str) -> None:
        """Follow `network` (idempotent) and wait, at most sync_timeout, for its snapshot."""
        with self._lock:
            self._idle_since.pop(network, None)
            # Not `get(...) or _start(...)`: a watch is sized by its keys, so one started
            # before its network's first key is falsy, and a second join used to start a
            # second watch and lose the first (events twice, and it outlived the stop).
            watch = self._watches.get(network)
            if watch is None:
                watch = self._start(network)
        if not watch.wait_synced(self._sync_timeout):
            log.warning("endpoints of %s not read from etcd within %.0fs; remote flows follow "
                        "when they are", network, self._sync_timeout)

    def sweep(self) -> None:
        """Start watches for networks with local endpoints; stop those idle past the grace."""
        wanted, now = self._local_networks(), time.monotonic()
        with self._lock:
            for network in wanted - self._watches.keys():
                self._start(network)
            for network in list(self._watches):
                if network in wanted:
                    self._idle_since.pop(network, None)
                    continue
                since = self._idle_since.setdefault(network, now)
                if now - since >= self._grace:
                    self._stop(network)

    def wait_synced(self, timeout: float) -> bool:
        """Have all watches read their first snapshot? Waits at most `timeout` in all."""
        deadline = time.monotonic() + timeout
        return all(w.wait_synced(max(0.0, deadline - time.monotonic()))
                   for w in self.watches().values())

    def watches(self) -> dict[str, PrefixWatch]:
        with self._lock:
            return dict(self._watches)

    def stop_all(self) -> None:
        with self._lock:
            for network in list(self._watches):
                self._watches.pop(network).stop()

    def _start(self, network: str) -> PrefixWatch:
        watch = PrefixWatch(store=self._store, prefix=f"{r.ENDPOINTS}{network}/",
                            on_changes=self._reconciler.on_endpoints,
                            probe_interval=self._probe_interval, observer=self._observer)
        self._watches[network] = watch
        watch.start()
        log.info("following network %s", network)
        return watch

    def _stop(self, network: str) -> None:
        self._watches.pop(network).stop()
        self._idle_since.pop(network, None)
        self._reconciler.forget_network(network)
        log.info("no local endpoint in network %s for %.0fs: stopped following it",
                 network, self._grace)
