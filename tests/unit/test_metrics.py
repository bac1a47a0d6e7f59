"""The metrics API records what it is told, and the listener serves it with the probes."""

from __future__ import annotations

import functools
import urllib.error
import urllib.request

import pytest

from overlay.agent.metrics import Metrics
from overlay.agent.metrics_server import DEFAULT_PORT, MetricsServer, Readiness, parse_address
from overlay_fixtures import eventually


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_cni_requests_count_by_command_and_code_and_time_them() -> None:
    m = Metrics()
    m.cni_request("ADD", 0, 0.02)
    m.cni_request("ADD", 0, 0.03)
    m.cni_request("ADD", 104, 0.5)
    assert value(m, "overlay_cni_requests_total", command="ADD", code="0") == 2
    assert value(m, "overlay_cni_requests_total", command="ADD", code="104") == 1
    assert value(m, "overlay_cni_requests_total", command="DEL", code="0") == 0  # pre-created
    assert value(m, "overlay_cni_request_duration_seconds_count", command="ADD", result="ok") == 2
    assert value(m, "overlay_cni_request_duration_seconds_bucket", command="ADD", result="error",
                 le="0.25") == 0


def test_flow_bundles_count_flows_only_when_applied() -> None:
    m = Metrics()
    m.flow_bundle(adds=5, mods=1, dels=2, seconds=0.004, ok=True)
    m.flow_bundle(adds=9, mods=9, dels=9, seconds=0.1, ok=False)
    assert value(m, "overlay_flow_bundles_total", result="ok") == 1
    assert value(m, "overlay_flow_bundles_total", result="error") == 1
    assert value(m, "overlay_flow_operations_total", operation="add") == 5
    assert value(m, "overlay_flow_operations_total", operation="delete") == 2
    assert value(m, "overlay_flow_bundle_duration_seconds_count") == 2


def test_watch_lag_is_head_minus_applied_and_head_never_goes_back() -> None:
    m = Metrics()
    m.watch_revision(100, cluster=120)
    assert value(m, "overlay_etcd_watch_lag_revisions") == 20
    m.watch_revision(110)  # no header: the known head stays
    assert value(m, "overlay_etcd_revision") == 120
    assert value(m, "overlay_etcd_watch_lag_revisions") == 10
    m.watch_revision(130, cluster=125)
    assert value(m, "overlay_etcd_watch_lag_revisions") == 0
    m.watch_resync("compacted")
    m.etcd_request_error("put_endpoint")
    assert value(m, "overlay_etcd_watch_resyncs_total", reason="compacted") == 1
    assert value(m, "overlay_etcd_request_errors_total", operation="put_endpoint") == 1


def test_state_gauges_come_from_callbacks_and_a_failing_one_drops_only_itself() -> None:
    m = Metrics()
    m.set_endpoint_source(lambda: (3, 7))
    m.set_flow_table_source(lambda: {0: 4, 10: 2, 30: 1})
    m.set_ip_usage_source(lambda: (_ for _ in ()).throw(RuntimeError("etcd down")))
    assert value(m, "overlay_endpoints", location="remote") == 7
    assert value(m, "overlay_flows", table="10", table_name="arp") == 2
    assert value(m, "overlay_ip_addresses", network="n", state="used") is None
    m.set_ip_usage_source(lambda: {"n": (2, 251)})
    assert value(m, "overlay_ip_addresses", network="n", state="free") == 251


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9999", ("127.0.0.1", 9999)), (":9999", ("127.0.0.1", 9999)),
    ("0.0.0.0:9999", ("0.0.0.0", 9999)), ("", ("127.0.0.1", DEFAULT_PORT)),
    ("10.1.2.3", ("10.1.2.3", DEFAULT_PORT)), ("[::1]:80", ("::1", 80)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


def test_parse_address_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_address("localhost:http")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_listener_serves_metrics_and_probes() -> None:
    m, ready = Metrics(), Readiness()
    server = MetricsServer(address="127.0.0.1:0", metrics=m, readiness=ready)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        m.janitor_removed(2)
        status, body = get(base + "/metrics")
        assert status == 200 and "overlay_janitor_removals_total 2.0" in body
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (503, "not ready: started\n")  # no checks yet
        synced = [False]
        ready.add("etcd-synced", lambda: synced[0])
        ready.add("ovsdb-connected", lambda: True)
        assert get(base + "/readyz") == (503, "not ready: etcd-synced\n")
        synced[0] = True
        assert get(base + "/readyz") == (200, "ok\n")
        status, body = get(base + "/readyz?verbose")
        assert "[+]etcd-synced ok" in body and body.endswith("ready\n")
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_restarted_agent_waits_for_its_predecessor_to_free_the_port() -> None:
    import socket
    import threading

    from overlay.agent import observe
    from overlay.agent.metrics import Metrics
    from overlay.agent.metrics_server import Readiness

    predecessor = socket.socket()
    predecessor.bind(("127.0.0.1", 0))
    predecessor.listen()
    port = predecessor.getsockname()[1]
    threading.Timer(0.5, predecessor.close).start()
    server = observe.start_server(f"127.0.0.1:{port}", Metrics(), Readiness(), patience=10)
    assert server is not None and server.port == port
    server.stop()


def test_a_port_held_for_good_is_still_an_error() -> None:
    import socket

    import pytest

    from overlay.agent import observe
    from overlay.agent.metrics import Metrics
    from overlay.agent.metrics_server import Readiness

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            observe.start_server(f"127.0.0.1:{holder.getsockname()[1]}", Metrics(), Readiness(),
                                 patience=0.5)


def test_silent_clients_do_not_block_a_probe_and_excess_ones_are_closed() -> None:
    """A client that connects and says nothing holds one slot (until its timeout), never the
    listener; past MAX_CLIENTS connections are closed at once, not queued."""
    import socket

    from overlay.agent import metrics_server as ms

    server = MetricsServer(address="127.0.0.1:0", metrics=Metrics(), readiness=Readiness())
    server.start()
    silent: list[socket.socket] = []
    try:
        for _ in range(ms.MAX_CLIENTS - 1):
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        # The listener accepts them all; one slot is left, and a probe gets it.
        assert get(f"http://127.0.0.1:{server.port}/healthz") == (200, "ok\n")
        assert wait_for(lambda: free_slots(server) == 1)  # the probe's thread has ended
        silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        assert wait_for(lambda: free_slots(server) == 0)
        # All slots held by silent clients: the next one is closed without an answer.
        refused = server._server.refused
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        assert extra.recv(1) == b""
        extra.close()
        assert server._server.refused == refused + 1
        # A silent client's connection ends at its timeout, and its slot comes back.
        silent[0].settimeout(ms.CLIENT_TIMEOUT * 4)
        assert silent[0].recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
        server.stop()


def free_slots(server: MetricsServer) -> int:
    return int(server._server.slots._value)  # type: ignore[attr-defined]


wait_for = functools.partial(eventually, timeout=10, interval=0.01)
