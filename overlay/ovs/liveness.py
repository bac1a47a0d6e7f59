"""Noticing that ovs-vswitchd restarted, so that the agent can put back what it lost.

A restarted ovs-vswitchd keeps OVSDB (bridges, ports, external_ids) but starts with empty
OpenFlow tables, and in netdev mode recreates br-phy's internal port without the underlay
address. Every restart must be seen, and seen once.

The signal is an OpenFlow connection to the bridge's management socket, held open and idle.
The kernel closes it when the process that serves it exits, however briefly the switch was
gone, so a restart cannot slip between two polls. Once a switch answers again, the identity of
the process behind the socket (SO_PEERCRED: the pid of the process that listens on it) tells a
restart (a new pid) from a connection that broke for another reason (the same pid: nothing to
redo), so no restart is counted twice. Nothing here reads a file or runs a subprocess.

What it replaced, and why: comparing the inode of `<bridge>.mgmt` between polls. The
filesystem hands a new socket the inode the old one just freed (on an ext4 /run, 13 restarts
in 15), so most restarts went unseen until the periodic check, 15 s later.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable

from overlay.ovs.openflow import read_exactly

log = logging.getLogger(__name__)

VERSION = 0x05  # OpenFlow 1.4, as ovs/openflow.py speaks
HELLO, ECHO_REQUEST, ECHO_REPLY = 0, 2, 3


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process listening on the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


class SwitchRestartWatcher:
    """Calls `on_restart` (on its own thread) after each ovs-vswitchd restart, once the new
    one serves the bridge. If `on_restart` raises, it is called again (with a growing delay,
    up to a second) until it succeeds: the restart stays pending, never forgotten."""

    def __init__(self, *, rundir: str, bridge: str, on_restart: Callable[[], None],
                 interval: float = 0.02) -> None:
        self._path = os.path.join(rundir, f"{bridge}.mgmt")
        self._on_restart = on_restart
        self._interval = interval  # between connection attempts while the switch is away
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._pid: int | None = None  # the switch whose flows we put in (or found) last
        self.restarts = 0     # restarts handled (on_restart returned)
        self.disconnects = 0  # connections lost (a restart, or the switch dropped us)
        self.followed = 0     # connections made and judged (restart handled, or none)
        self._thread = threading.Thread(target=self._run, name="vswitchd-watch", daemon=True)

    def reference(self) -> bool:
        """Take the switch serving the bridge now as the one of reference, unless one is
        taken already; True if there is one. The agent calls this before it first programs
        the switch: a restart from then on, even one before start(), is seen (the held
        connection is closed by it, and the new pid differs), so nothing it programmed in
        start-up is lost to a restart unseen. False if the switch does not answer (yet)."""
        if self._pid is not None:
            return True
        try:
            sock = self._connect()
            pid = peer_pid(sock)
        except OSError as exc:
            log.info("no reference switch on %s yet (%s)", self._path, exc)
            return False
        self._sock, self._pid = sock, pid
        return True

    def start(self) -> None:
        """Follow on a thread, from the reference taken earlier (or now, if none was). A
        switch that does not answer yet is taken as restarted once it does."""
        if not self.reference():
            log.warning("cannot watch %s yet", self._path)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close()

    @property
    def pid(self) -> int | None:
        """The pid of the switch whose restart was handled last (or found at start)."""
        return self._pid

    def _run(self) -> None:
        delay = self._interval
        while not self._stop.is_set():
            if self._sock is None:
                try:
                    self._sock = self._connect()
                except OSError:  # not back yet (no socket, or nobody listening on it)
                    self._stop.wait(self._interval)
                    continue
            try:
                pid = peer_pid(self._sock)
            except OSError:
                self._close()
                continue
            if not self._settle(pid):
                self._close()  # reconnect, see the new pid again, and try again
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = self._interval
            self.followed += 1
            self._follow(self._sock)  # returns when the connection is lost (or on stop)
            self._close()

    def _settle(self, pid: int) -> bool:
        """The switch behind the socket is `pid`: put things back if it is a new one. False
        if that failed (the restart is still to be handled)."""
        if pid == self._pid:
            return True
        if self._pid is None:
            log.warning("ovs-vswitchd (pid %d) serves %s; reprogramming", pid, self._path)
        else:
            log.warning("ovs-vswitchd restarted (pid %d, was %d); reprogramming", pid,
                        self._pid)
        try:
            self._on_restart()
        except Exception:
            log.exception("reprogramming after the ovs-vswitchd restart failed; retrying")
            return False
        self._pid = pid
        self.restarts += 1
        return True

    def _follow(self, sock: socket.socket) -> None:
        """Sit on the connection until the switch closes it: answer its echo requests (it
        drops an idle management connection that does not) and ignore everything else."""
        while not self._stop.is_set():
            try:
                if not select.select([sock], [], [], 0.5)[0]:
                    continue
                header = read_exactly(sock, 8)
                version, kind, length, xid = struct.unpack("!BBHI", header)
                body = read_exactly(sock, length - 8)
                if kind == ECHO_REQUEST:
                    sock.sendall(struct.pack("!BBHI", version, ECHO_REPLY, length, xid) + body)
            except (OSError, ValueError, struct.error):
                if not self._stop.is_set():
                    log.info("the OpenFlow connection to %s closed; waiting for the switch",
                             self._path)
                    self.disconnects += 1
                return

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self._path)
            sock.sendall(struct.pack("!BBHI", VERSION, HELLO, 8, 1))
            _, kind, length, _ = struct.unpack("!BBHI", read_exactly(sock, 8))
            read_exactly(sock, length - 8)
            if kind != HELLO:
                raise OSError(f"expected HELLO from {self._path}, got type {kind}")
        except (OSError, struct.error) as exc:
            sock.close()
            raise OSError(str(exc)) from None
        return sock

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
