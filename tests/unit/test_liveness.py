"""The switch-restart watcher against stand-in switches: small processes that listen on a
`<bridge>.mgmt` unix socket and answer HELLO (and echo) as ovs-vswitchd does. Every new
process is one restart, seen once; a connection dropped by the same process is none; a restart
whose reprogramming fails stays pending until it succeeds."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from overlay.ovs.liveness import SwitchRestartWatcher
from overlay_fixtures import eventually

# Listens on argv[1]; answers HELLO; "drop" on stdin closes every connection but keeps
# listening (a connection lost without a restart).
SWITCH = r"""
import os, select, socket, struct, sys
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(8)
conns = []
print("up", flush=True)
while True:
    ready = select.select([srv, sys.stdin] + conns, [], [])[0]
    for s in ready:
        if s is srv:
            conns.append(srv.accept()[0])
        elif s is sys.stdin:
            if not sys.stdin.readline():
                sys.exit(0)
            for c in conns:
                c.close()
            conns = []
        else:
            head = s.recv(8)
            if len(head) < 8:
                conns.remove(s); s.close(); continue
            version, kind, length, xid = struct.unpack("!BBHI", head)
            if length > 8:
                s.recv(length - 8)
            if kind == 0:
                s.sendall(struct.pack("!BBHI", 5, 0, 8, xid))
"""


class Switch:
    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SWITCH, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "up\n"

    def drop_connections(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("drop\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


wait_until = functools.partial(eventually, timeout=10, interval=0.01)


@pytest.fixture
def rundir() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield directory


def test_every_restart_is_seen_once_and_a_dropped_connection_is_none(rundir: str) -> None:
    switch = Switch(os.path.join(rundir, "br-int.mgmt"))
    calls: list[float] = []
    watcher = SwitchRestartWatcher(rundir=rundir, bridge="br-int",
                                   on_restart=lambda: calls.append(time.monotonic()))
    watcher.start()
    try:
        assert watcher.pid == switch.proc.pid and calls == []
        for n in range(1, 6):
            switch.kill()  # the new process gets the same path, perhaps the same inode
            switch = Switch(os.path.join(rundir, "br-int.mgmt"))
            assert wait_until(lambda n=n: len(calls) == n)  # type: ignore[misc]
            assert watcher.pid == switch.proc.pid
        switch.drop_connections()  # the same switch: reconnect, nothing to redo
        assert wait_until(lambda: watcher.disconnects == 6)
        assert wait_until(lambda: watcher.followed == 7)  # at start, 5 restarts, this one
        assert len(calls) == 5 and watcher.restarts == 5
    finally:
        watcher.stop()
        switch.kill()


def test_a_failed_reprogramming_is_retried_until_it_succeeds(rundir: str) -> None:
    switch = Switch(os.path.join(rundir, "br-int.mgmt"))
    attempts: list[int] = []
    done = threading.Event()

    def on_restart() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("ports not there yet")
        done.set()
    watcher = SwitchRestartWatcher(rundir=rundir, bridge="br-int", on_restart=on_restart)
    watcher.start()
    try:
        switch.kill()
        switch = Switch(os.path.join(rundir, "br-int.mgmt"))
        assert done.wait(10)
        assert len(attempts) == 3 and watcher.restarts == 1
    finally:
        watcher.stop()
        switch.kill()


def test_a_switch_absent_at_start_is_reprogrammed_once_it_answers(rundir: str) -> None:
    calls: list[int] = []
    watcher = SwitchRestartWatcher(rundir=rundir, bridge="br-int",
                                   on_restart=lambda: calls.append(1))
    watcher.start()
    switch = Switch(os.path.join(rundir, "br-int.mgmt"))
    try:
        assert wait_until(lambda: calls == [1])
        assert watcher.pid == switch.proc.pid
    finally:
        watcher.stop()
        switch.kill()


def test_a_restart_between_reference_and_start_is_seen(rundir: str) -> None:
    """The agent takes its reference before it first programs the switch and starts the
    watcher only once it serves CNI: a restart in between (start-up) is handled once."""
    path = os.path.join(rundir, "br-int.mgmt")
    switch = Switch(path)
    calls: list[int] = []
    watcher = SwitchRestartWatcher(rundir=rundir, bridge="br-int",
                                   on_restart=lambda: calls.append(1))
    assert watcher.reference() and watcher.pid == switch.proc.pid
    switch.kill()
    switch = Switch(path)
    assert watcher.reference() and watcher.pid != switch.proc.pid  # the first one stays
    watcher.start()
    try:
        assert wait_until(lambda: calls == [1])
        assert watcher.pid == switch.proc.pid and watcher.restarts == 1
    finally:
        watcher.stop()
        switch.kill()


def test_no_reference_before_the_bridge_exists_then_one_after(rundir: str) -> None:
    """A host's first start: no bridge (no socket) before prepare(), one after it; that
    switch is the reference, not a restart."""
    watcher = SwitchRestartWatcher(rundir=rundir, bridge="br-int", on_restart=lambda: None)
    assert not watcher.reference() and watcher.pid is None
    switch = Switch(os.path.join(rundir, "br-int.mgmt"))
    try:
        assert watcher.reference() and watcher.pid == switch.proc.pid
        watcher.start()
        assert wait_until(lambda: watcher.followed == 1)
        assert watcher.restarts == 0
    finally:
        watcher.stop()
        switch.kill()
