"""PrefixMirror against a real etcd: it follows changes, survives an etcd restart by resuming
from its last revision, and resyncs by snapshot when etcd compacted past that revision."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.store.etcd import Store
from overlay.store.watch import PrefixMirror


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Etcd:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="overlay-etcd-")
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        steps.spawn(["etcd", "--name", "t", "--data-dir", f"{self.dir}/data",
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
                     "--initial-cluster", f"t=http://127.0.0.1:{self.peer}"],
                    netns=None, log=f"{self.dir}/etcd.log", pidfile=f"{self.dir}/etcd.pid")
        steps.wait_for(lambda: run(["etcdctl", "--endpoints", self.url, "endpoint", "health"],
                                   check=False).returncode == 0, "etcd", log=f"{self.dir}/etcd.log")

    def stop(self) -> None:
        steps.stop_pidfile(f"{self.dir}/etcd.pid")

    def ctl(self, *args: str) -> str:
        return run(["etcdctl", "--endpoints", self.url, *args]).stdout


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    server = Etcd()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def wait_until(predicate: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_mirror_resumes_and_resyncs_after_compaction(etcd: Etcd,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_change(state: dict[str, bytes]) -> None:
        with lock:
            seen.clear()
            seen.update(state)

    etcd.ctl("put", "/t/a", "1")
    store = Store(endpoints=[etcd.url], timeout=1.0)
    # The periodic verifier would repair this too (tests/e2e/test_etcd_cluster.py relies on
    # it); keep it out of the way so that the watch's own compaction handling is what is shown.
    mirror = PrefixMirror(store=store, prefix="/t/", on_change=on_change, retry_interval=3.0,
                          verify_interval=600)
    mirror.start()
    try:
        assert mirror.wait_synced(10)
        etcd.ctl("put", "/t/b", "2")
        assert wait_until(lambda: seen.get("/t/b") == b"2")
        last = mirror.revision

        etcd.stop()  # the watch breaks; the mirror waits 3 s before it tries again
        etcd.start()
        etcd.ctl("put", "/t/c", "3")
        etcd.ctl("del", "/t/a")
        revision = int(etcd.ctl("put", "/t/d", "4", "-w", "json").split('"revision":')[1]
                       .split(",")[0].split("}")[0])
        etcd.ctl("compact", str(revision))  # past everything the mirror has seen

        assert wait_until(lambda: set(seen) == {"/t/b", "/t/c", "/t/d"})
        assert mirror.revision is not None and last is not None and mirror.revision > last
        assert "compacted past revision" in caplog.text  # took the snapshot-and-diff path
    finally:
        mirror.stop()
        store.close()

