"""Waiting for an interface's ofport without polling ovsdb-server.

A new port is usable once ovs-vswitchd has attached its interface and written the OpenFlow
port number into the Interface row; the IDL learns it from ovsdb-server's update. ADD used to
look again every 2, 4, 8, 20 ms through a read transaction each time; every look queued
behind the other ADDs' transactions on the IDL's one thread (ovsdbapp's queue holds one), so
ten parallel ADDs spent most of their port step waiting for their turn to look, and a serial
ADD lost on average half a sleep after the ofport arrived.

Now the IDL itself says when an Interface row changes (python-ovs calls Idl.notify for every
row it applies, on the IDL's thread): `NotifyingIdl.notify` sets the event of whoever waits
for that name, and the waiter reads the row from the IDL's memory. Rules that keep this free
of deadlocks: the IDL thread never waits on a caller (notify only sets events, under a lock
no caller holds while it waits for anything), and a caller reads rows under the connection's
lock, which the IDL thread holds only while it runs (never while waiting for a caller).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ovsdbapp.backend.ovs_idl import connection

# A missed notification (an IDL reconnect replays rows) costs at most this much: the waiter
# looks at the row again at least this often.
LOOK_AGAIN_SECONDS = 0.1


class Waiters:
    """Events of the threads waiting for an Interface row, by interface name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}

    def register(self, name: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(name, []).append(event)
        return event

    def unregister(self, name: str, event: threading.Event) -> None:
        with self._lock:
            events = self._events.get(name, [])
            if event in events:
                events.remove(event)
            if not events:
                self._events.pop(name, None)

    def changed(self, name: str) -> None:
        """(The IDL thread.) Interface `name` changed: wake whoever waits for it."""
        with self._lock:
            for event in self._events.get(name, ()):
                event.set()


class NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """ovsdbapp's IDL (untyped, hence the ignore), telling `waiters` of every change to an
    Interface row."""

    waiters: Waiters

    def notify(self, event: Any, row: Any, updates: Any = None) -> None:
        try:
            if row._table.name == "Interface":
                self.waiters.changed(str(row.name))
        except AttributeError:  # a row without its columns (deleted): no one waits for it
            pass
        super().notify(event, row, updates)


def wait_for(waiters: Waiters, name: str, look: Callable[[], int | None],
             timeout: float) -> int | None:
    """Call `look` (None: not yet) until it gives a value or `timeout` seconds passed, again
    each time the IDL says the row of `name` changed. Returns the value, or None."""
    event = waiters.register(name)
    try:
        deadline = time.monotonic() + timeout
        while True:
            value = look()
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event.wait(min(remaining, LOOK_AGAIN_SECONDS))
            event.clear()  # before the next look: a change after it sets the event again
    finally:
        waiters.unregister(name, event)
