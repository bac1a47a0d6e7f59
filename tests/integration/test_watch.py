"""PrefixWatch against a real etcd. Whatever the write pattern (one key per put, a transaction,
a DeleteRange, a revoked lease, compaction during a burst, a stream gone silent, an event lost),
the consumer ends up holding exactly what etcd holds."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.store.etcd import Store
from overlay.store.stream import Change
from overlay.store.watch import PrefixWatch


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


class Consumer:
    """What a watch's consumer would hold: the keys and values, from the changes alone."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, changes: list[Change]) -> None:
        with self.lock:
            self.batches.append(len(changes))
            for c in changes:
                if c.value is None:
                    self.state.pop(c.key, None)
                else:
                    self.state[c.key] = c.value


def etcd_state(store: Store, prefix: str) -> dict[str, bytes]:
    return store.snapshot(prefix)[1]


def converges(store: Store, consumer: Consumer, prefix: str = "/t/", timeout: float = 20) -> bool:
    return wait_until(lambda: consumer.state == etcd_state(store, prefix), timeout)


@pytest.fixture
def store(etcd: Etcd) -> Iterator[Store]:
    client = Store(endpoints=[etcd.url], timeout=2.0)
    yield client
    client.close()


def follow(store: Store, consumer: Consumer, **kwargs: float) -> PrefixWatch:
    watch = PrefixWatch(store=store, prefix="/t/", on_changes=consumer, **kwargs)
    watch.start()
    assert watch.wait_synced(10)
    return watch


def revision_of(etcd: Etcd) -> int:
    out = etcd.ctl("get", "/", "-w", "json")
    return int(out.split('"revision":')[1].split(",")[0].split("}")[0])


def test_resumes_after_an_etcd_restart_and_resyncs_after_compaction(
        etcd: Etcd, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    etcd.ctl("put", "/t/a", "1")
    consumer = Consumer()
    watch = follow(store, consumer, retry_interval=3.0, probe_interval=600)
    try:
        etcd.ctl("put", "/t/b", "2")
        assert wait_until(lambda: consumer.state.get("/t/b") == b"2")
        last = watch.revision

        etcd.stop()  # the watch breaks; it waits 3 s before it tries again
        etcd.start()
        etcd.ctl("put", "/t/c", "3")
        etcd.ctl("del", "/t/a")
        etcd.ctl("put", "/t/d", "4")
        etcd.ctl("compact", str(revision_of(etcd)))  # past everything the watch has seen

        assert wait_until(lambda: set(consumer.state) == {"/t/b", "/t/c", "/t/d"})
        assert watch.revision > last
        assert "compacted at revision" in caplog.text  # took the snapshot-and-diff path
    finally:
        watch.stop()


def test_every_event_of_a_transaction_a_delete_range_and_a_revoked_lease(
        etcd: Etcd, store: Store) -> None:
    consumer = Consumer()
    watch = follow(store, consumer, probe_interval=600)  # no probe: the events alone must do
    try:
        tx = store.client.transactions
        ok, _ = store.client.transaction(compare=[], failure=[],
                                         success=[tx.put(f"/t/tx/{i}", str(i)) for i in range(40)])
        assert ok
        assert converges(store, consumer) and len(consumer.state) == 40
        assert max(consumer.batches) == 40  # one revision, one batch

        for i in range(300):
            store.client.put(f"/t/many/{i:03d}", "x" * 50)
        assert converges(store, consumer) and len(consumer.state) == 340
        etcd.ctl("del", "--prefix", "/t/many/")  # one DeleteRange, 300 events, one revision
        assert converges(store, consumer) and len(consumer.state) == 40

        lease = store.client.lease(60)
        for host in range(20):  # keys of 20 "hosts" under one lease
            store.client.put(f"/t/leased/{host}", "h", lease=lease)
        assert converges(store, consumer) and len(consumer.state) == 60
        lease.revoke()
        assert converges(store, consumer) and set(consumer.state) == {f"/t/tx/{i}" for i in range(40)}
        assert watch.resyncs == 0  # all of it through the watch, nothing repaired afterwards
    finally:
        watch.stop()


def test_compaction_during_a_burst(etcd: Etcd, store: Store) -> None:
    gate = threading.Event()
    consumer = Consumer()

    def slow(changes: list[Change]) -> None:
        gate.wait(30)  # the consumer is busy while the burst goes on
        consumer(changes)

    watch = PrefixWatch(store=store, prefix="/t/", on_changes=slow, probe_interval=600)
    gate.set()
    watch.start()
    assert watch.wait_synced(10)
    try:
        gate.clear()
        store.client.put("/t/first", "1")  # the consumer now blocks on this one
        assert wait_until(lambda: watch.revision > 0 and watch._stream is not None)
        time.sleep(0.5)
        watch._close_stream()  # the connection drops; the burst goes on without the watch
        for i in range(500):
            store.client.put(f"/t/burst/{i}", str(i))
        for i in range(0, 500, 2):
            store.client.delete(f"/t/burst/{i}")
        etcd.ctl("compact", str(revision_of(etcd)))  # and etcd forgets the history it needs
        gate.set()
        assert converges(store, consumer) and len(consumer.state) == 251
        assert watch.resyncs >= 1
    finally:
        gate.set()
        watch.stop()


def test_a_silent_stream_is_noticed_by_a_progress_request(
        etcd: Etcd, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer()
    watch = follow(store, consumer, probe_interval=1.0, retry_interval=0.5)
    pid = int(open(f"{etcd.dir}/etcd.pid").read())
    try:
        os.kill(pid, signal.SIGSTOP)  # the TCP connection stays up; nothing answers
        assert wait_until(lambda: "did not answer a progress request" in caplog.text, 10)
        os.kill(pid, signal.SIGCONT)
        store.client.put("/t/after", "1")
        assert converges(store, consumer)
    finally:
        os.kill(pid, signal.SIGCONT)
        watch.stop()


def test_a_lost_event_is_found_by_the_count_probe_and_repaired_by_content(
        etcd: Etcd, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(10):
        store.client.put(f"/t/k{i}", str(i))
    consumer = Consumer()
    watch = follow(store, consumer, probe_interval=0.5)
    try:
        # Simulate a put and a delete that never arrived: the watch and its consumer both
        # lack /t/k3 and both still hold a key etcd deleted. The revision says nothing is wrong.
        with watch._lock, consumer.lock:
            del watch._known["/t/k3"]
            del consumer.state["/t/k3"]
            watch._known["/t/ghost"] = (1, 0)
            watch._known["/t/ghost2"] = (1, 0)
            consumer.state["/t/ghost"] = b"x"
            consumer.state["/t/ghost2"] = b"x"
        assert converges(store, consumer, timeout=10)
        assert watch.resyncs == 1 and "3 keys differed from etcd" in caplog.text
    finally:
        watch.stop()


def test_endpoints_outside_reads_every_other_network_and_none_of_the_followed(
        store: Store) -> None:
    """The start-up janitor's read: the gaps between followed networks' prefixes, paged."""
    from overlay.store import records as r

    def record(network: str, i: int) -> r.EndpointRecord:
        return r.EndpointRecord(network=network, container_id=f"c{i}", ifname="eth0",
                                host="h", vni=7, ips=["10.0.0.2/24"], mac="0a:58:0a:00:00:02",
                                port="p", netns="/n")

    networks = ["a", "a-b", "b", "bb", "c", "z"]  # "a-b" and "bb" sort around the followed
    for network in networks:
        count = 1100 if network == "c" else 3  # more than two pages of 500
        for i in range(count):
            rec = record(network, i)
            store.client.put(rec.key, rec.to_json())
    for followed in [set(), {"a"}, {"b", "z"}, {"a", "a-b", "b", "bb", "c", "z"}, {"nosuch"}]:
        got = sorted((rec.network, rec.container_id)
                     for rec in store.endpoints_outside(followed, page=500))
        want = sorted((rec.network, rec.container_id) for rec in store.all_endpoints()
                      if rec.network not in followed)
        assert got == want, followed


def test_a_paged_read_hands_over_pages_of_one_revision(etcd: Etcd, store: Store) -> None:
    """Pages reach the consumer as they are read, while the next one is in flight; a key
    written meanwhile is in none of them (every page is read at the first page's revision)."""
    for i in range(10):
        store.client.put(f"/p/{i:02d}", "v")
    pages: list[list[str]] = []

    def on_page(items: list[Any]) -> None:
        pages.append([item.key for item in items])
        store.client.put(f"/p/{len(pages):02d}x", "written while reading")

    revision, items = store.read_prefix("/p/", page=3, on_page=on_page)
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [k for p in pages for k in p] == [item.key for item in items] == \
        [f"/p/{i:02d}" for i in range(10)]
    assert all(item.mod_revision <= revision for item in items)


def test_the_first_snapshot_reaches_the_consumer_page_by_page(etcd: Etcd, store: Store,
                                                              monkeypatch: Any) -> None:
    real = Store.read_prefix
    monkeypatch.setattr(Store, "read_prefix",
                        lambda self, prefix, **kw: real(self, prefix, **{**kw, "page": 4}))
    for i in range(10):
        store.client.put(f"/t/{i:02d}", str(i))
    consumer = Consumer()
    watch = PrefixWatch(store=store, prefix="/t/", on_changes=consumer)
    watch.start()
    try:
        assert watch.wait_synced(20)
        assert consumer.batches[:3] == [4, 4, 2]  # then the (empty) end of the snapshot
        assert consumer.state == {f"/t/{i:02d}": str(i).encode() for i in range(10)}
        store.client.put("/t/new", "n")
        assert wait_until(lambda: consumer.state.get("/t/new") == b"n")
    finally:
        watch.stop()


class Recorder:
    """Stands in for the reconciler: what the network watches hand it."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def on_endpoints(self, changes: list[Change]) -> None:
        with self.lock:
            self.keys += [c.key for c in changes]

    def forget_network(self, network: str) -> None:
        pass


def watch_threads(prefix: str) -> int:
    return sum(t.name == f"watch {prefix}" and t.is_alive() for t in threading.enumerate())


def test_a_network_joined_before_its_first_key_has_one_watch(store: Store) -> None:
    """Two ADDs in a network that has no endpoint yet: the second join must find the first
    one's watch (empty, hence len() == 0), not start another one and lose track of the first,
    which would then deliver every event twice and outlive the network's stop."""
    from typing import cast

    from overlay.agent.networks import NetworkWatches
    from overlay.agent.reconciler import Reconciler

    recorder = Recorder()
    local: set[str] = {"fresh"}
    networks = NetworkWatches(store=store, reconciler=cast(Reconciler, recorder),
                              local_networks=lambda: set(local), grace=0.0)
    prefix = "/overlay/v1/endpoints/fresh/"
    try:
        networks.join("fresh")
        first = networks.watches()["fresh"]
        networks.join("fresh")
        networks.sweep()
        assert networks.watches()["fresh"] is first
        assert watch_threads(prefix) == 1
        store.client.put(prefix + "c/eth0", "{}")
        assert wait_until(lambda: recorder.keys == [prefix + "c/eth0"], 10)
        local.clear()
        networks.sweep()  # no local endpoint left, no grace: the watch stops
        assert networks.watches() == {}
        assert wait_until(lambda: watch_threads(prefix) == 0, 10)  # none left behind
    finally:
        networks.stop_all()
