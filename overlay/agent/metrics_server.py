"""The agent's HTTP listener: /metrics (Prometheus), /healthz and /readyz.

/healthz answers 200 as long as the process serves HTTP at all (a liveness probe restarts an
agent that hangs, not one whose etcd is down). /readyz answers 200 only when every readiness
check passes (etcd synced, OVS answering, flows installed), and 503 with the failing checks
otherwise, like flannel's and the kubelet's probes; `?verbose` lists every check.

A thread per connection, at most MAX_CLIENTS at once, each with a CLIENT_TIMEOUT on every
read and write: a client that connects and sends nothing (or trickles) holds one slot until its
timeout, never the listener, so a probe still gets through; past MAX_CLIENTS a connection is
closed at once instead of queueing. (The earlier single-threaded server was blocked whole by
one idle connection, and it had no timeout.) Off unless `metrics_address` is configured, and an
address without a host (":10390", "") means 127.0.0.1: a container reaches the host through
its gateway address, so listening on every address would show it the agent's internals;
an operator who wants a scraper elsewhere names the address ("0.0.0.0:10390").
The default port, 10390, sits outside the Prometheus exporter range 9100-9999
(fully allocated) and away from the CNI agents an operator may run next to us (Calico Felix
9091, Cilium 9962-9965, Antrea 10349-10351, kube-ovn 10660-10665) and from Kubernetes' own
components (10249-10259).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from overlay.agent.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_PORT = 10390
DEFAULT_HOST = "127.0.0.1"
MAX_CLIENTS = 16         # connections served at once; more are closed, not queued
CLIENT_TIMEOUT = 5.0     # seconds a connection may stay silent (read or write)
Check = Callable[[], bool]


def parse_address(address: str) -> tuple[str, int]:
    """"host:port", ":port" (127.0.0.1), "host" (default port), "[v6]:port"."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, ""
    if port and not port.isdigit():
        raise ValueError(f"metrics_address {address!r}: port {port!r} is not a number")
    number = int(port) if port else DEFAULT_PORT
    if not 0 <= number <= 65535:
        raise ValueError(f"metrics_address {address!r}: port out of range")
    return host or DEFAULT_HOST, number


class Readiness:
    """Named checks, added as the agent comes up; not ready until the first one is added."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()

    def add(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def evaluate(self) -> dict[str, bool]:
        with self._lock:
            checks = dict(self._checks)
        if not checks:
            return {"started": False}
        out = {}
        for name, check in checks.items():
            try:
                out[name] = bool(check())
            except Exception as exc:  # a check that raises is a check that fails
                log.debug("readiness check %s raised %s", name, exc)
                out[name] = False
        return out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a silent client's timeout
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, readiness: Readiness) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.refused = 0  # connections closed because MAX_CLIENTS were being served
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = CLIENT_TIMEOUT  # socket timeout of each connection (StreamRequestHandler)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            results = self.server.readiness.evaluate()
            ready = all(results.values())
            failing = [name for name, ok in results.items() if not ok]
            if "verbose" in query:
                body = "".join(f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}\n"
                               for name, ok in results.items())
                body += "ready\n" if ready else "not ready\n"
            else:
                body = "ok\n" if ready else f"not ready: {', '.join(failing)}\n"
            self._send(200 if ready else 503, body.encode())
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not events
        log.debug("%s " + format, self.client_address[0], *args)


class MetricsServer:
    def __init__(self, *, address: str, metrics: Metrics, readiness: Readiness) -> None:
        host, port = parse_address(address)
        self._server = _HTTPServer((host, port), metrics, readiness)  # binds now: errors early
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
