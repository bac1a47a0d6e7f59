"""Noticing that ovs-vswitchd restarted, so that the agent can put back what it lost.

A restarted ovs-vswitchd keeps OVSDB (bridges, ports, external_ids) but starts with empty
OpenFlow tables, and in netdev mode recreates br-phy's internal port without the underlay
address. It also recreates each bridge's management socket in OVS_RUNDIR, which is what we
watch: a new inode on <rundir>/<bridge>.mgmt means a new ovs-vswitchd has built that bridge
and is ready for flows. Polling a stat() a few times a second costs nothing and needs no
subprocess, unlike asking ovs-vswitchd itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class SwitchRestartWatcher:
    def __init__(self, *, rundir: str, bridge: str, on_restart: Callable[[], None],
                 interval: float = 0.2) -> None:
        self._path = os.path.join(rundir, f"{bridge}.mgmt")
        self._on_restart = on_restart
        self._interval = interval
        self._stop = threading.Event()
        self._inode = self._current()
        self._thread = threading.Thread(target=self._run, name="vswitchd-watch", daemon=True)

    def _current(self) -> int | None:
        try:
            return os.stat(self._path).st_ino
        except OSError:
            return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            inode = self._current()
            if inode is None or inode == self._inode:
                continue
            log.warning("ovs-vswitchd restarted (%s is new); reprogramming", self._path)
            try:
                self._on_restart()
                self._inode = inode
            except Exception:  # keep the old inode: the next poll tries again
                log.exception("reprogramming after the ovs-vswitchd restart failed")
