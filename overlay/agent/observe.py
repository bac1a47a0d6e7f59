"""Wiring the agent's state into its metrics and readiness checks (the agent's entry point
calls these two functions; everything they read is passed in).

The state gauges read the same sources an operator would: endpoints and flows per table from
the dataplane's intent (which its verification keeps equal to the switch's count), IP
addresses from etcd. The etcd reads for IP addresses are cached for
IP_USAGE_TTL: a scrape every 15 s from every host must not turn into a range read per network
per scrape.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping

from overlay.agent.metrics import Metrics
from overlay.agent.metrics_server import MetricsServer, Readiness
from overlay.agent.policy_stats import PolicyStats
from overlay.dataplane.dataplane import Dataplane
from overlay.errors import CniError
from overlay.ovs import portschema
from overlay.ovs.ovsdb import Ovsdb
from overlay.store.etcd import Store
from overlay.store.watch import WatchObserver

log = logging.getLogger(__name__)

IP_USAGE_TTL = 30.0


BIND_PATIENCE = 15.0  # seconds a restarting agent waits for its predecessor to free the port


def start_server(address: str, metrics: Metrics, readiness: Readiness,
                 patience: float = BIND_PATIENCE) -> MetricsServer | None:
    """The HTTP listener, if `address` is set (bind errors propagate: a typo must not leave
    an operator without metrics and without a word).

    "Address in use" is retried for `patience` seconds first: on a restart (systemd's
    Restart=, an operator's kill and start) the previous agent may still be draining its gRPC
    calls with the port open, and the new one must not give up because of it.
    """
    if not address:
        return None
    deadline = time.monotonic() + patience
    while True:
        try:
            server = MetricsServer(address=address, metrics=metrics, readiness=readiness)
            break
        except OSError as err:
            if err.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    server.start()
    log.info("metrics, /healthz and /readyz on %s (port %d)", address, server.port)
    return server


def local_attachments(ovs: Ovsdb, bridge: str) -> list[tuple[str, str, str]]:
    """(network, containerID, ifname) of every endpoint port on this host (OVSDB's cache)."""
    owners = (portschema.owner(port.external_ids) for port in ovs.ports(bridge))
    return sorted((o.network, o.container_id, o.ifname) for o in owners if o is not None)


def _usable(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    # network and broadcast addresses are never handed out (overlay.ipam.pool.reserved)
    return subnet.num_addresses - (2 if subnet.version == 4 else 1)


class IpUsage:
    """network -> (addresses in use, free) for this host's networks.

    Read again when this host's attachments changed (an ADD or DEL here shows at the next
    scrape), else at most every `ttl` seconds (other hosts' allocations show within it)."""

    def __init__(self, *, ovs: Ovsdb, store: Store, bridge: str, ttl: float = IP_USAGE_TTL,
                 on_etcd_error: Callable[[str], None] = lambda op: None) -> None:
        self._ovs, self._store, self._bridge, self._ttl = ovs, store, bridge, ttl
        self._on_etcd_error = on_etcd_error
        self._cache: dict[str, tuple[int, int]] = {}
        self._at = float("-inf")
        self._seen: list[tuple[str, str, str]] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Mapping[str, tuple[int, int]]:
        with self._lock:
            here = local_attachments(self._ovs, self._bridge)
            if here != self._seen or time.monotonic() - self._at >= self._ttl:
                self._cache = self._read(here)
                self._at, self._seen = time.monotonic(), here
            return dict(self._cache)

    def _read(self, here: list[tuple[str, str, str]]) -> dict[str, tuple[int, int]]:
        out = {}
        one_each = {network: (container_id, ifname) for network, container_id, ifname in here}
        for network, (container_id, ifname) in one_each.items():
            try:
                used = self._store.allocations(network)
                rec = self._store.get_endpoint(network, container_id, ifname)
            except CniError:
                self._on_etcd_error("ip-usage")
                continue
            free = 0
            if rec is not None and rec.ips:
                # the subnet of the endpoint's first address is the network's (netconf order)
                subnet = ipaddress.ip_interface(rec.ips[0]).network
                free = max(0, _usable(subnet) - sum(1 for ip in used if ip in subnet))
            out[network] = (len(used), free)
        return out


class WatchMetrics(WatchObserver):
    """The etcd watches' reports, as metrics. Several watches (hosts, one per network) report;
    the revision shown is the newest any of them applied."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._newest = 0
        self._lock = threading.Lock()

    def applied(self, revision: int) -> None:
        with self._lock:
            self._newest = max(self._newest, revision)
            newest = self._newest
        self._metrics.watch_revision(newest)

    def resynced(self, reason: str) -> None:
        self._metrics.watch_resync(reason)


def watch_agent(metrics: Metrics, readiness: Readiness, *, dataplane: Dataplane,
                ovs: Ovsdb, store: Store, bridge: str,
                etcd_synced: Callable[[], bool]) -> PolicyStats:
    """Register the state gauges and the readiness checks of a running agent. Returns the
    policy counters' reader, started: the caller stops it."""
    metrics.set_endpoint_source(lambda: dataplane.counts()[:2])
    # From the dataplane's model, not a dump of the switch: at 100,000 rules a dump per scrape
    # costs seconds. The periodic verify() keeps the switch's rules equal to the model's.
    metrics.set_flow_table_source(dataplane.flows_per_table)
    metrics.set_ip_usage_source(IpUsage(ovs=ovs, store=store, bridge=bridge,
                                        on_etcd_error=metrics.etcd_request_error))
    # Per-rule policy counters and the audit log of denied connections (policy_stats.py).
    stats = PolicyStats(dataplane=dataplane)
    metrics.registry.register(stats)
    stats.start()
    readiness.add("etcd-synced", etcd_synced)
    readiness.add("ovsdb-connected", ovs.connected)
    readiness.add("vswitchd-answers", dataplane.switch_answers)
    # This run has put its whole table in the switch, or found it there (a restarted agent
    # adopts an identical table: its rules keep the cookies of the runs that wrote them).
    readiness.add("flows-installed", dataplane.table_in_switch)
    return stats
