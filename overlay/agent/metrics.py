"""The agent's Prometheus metrics: one object owns them all, callers use its small typed API.

Names follow Prometheus conventions: an `overlay_` prefix, base units (seconds), `_total` on
counters. Every metric lives in the registry of one `Metrics` instance rather than in the
library's global registry, so tests (and several agents in one process) never see each other's
numbers, and nothing here is a module-level singleton: the agent builds one and hands it to
whoever records.

Two kinds of numbers:
- Events (CNI requests, flow bundles, watch resyncs, janitor removals, OVS restarts, etcd
  errors) are counted at the moment they happen, through the methods below.
- State (endpoints, flows per table, IP addresses) is read at scrape time from callbacks the
  agent registers, so a number can never drift from the state it describes, and nothing has
  to remember to update a gauge.

Who calls what (the agent's entry point builds one Metrics and injects it):
    CniServicer            cni_request(command, code, seconds)          (done)
    agent (agent.py)       janitor_removed(n), ovs_restart()            (done)
    observe.watch_agent    set_endpoint_source, set_flow_table_source, set_ip_usage_source
    dataplane              flow_bundle(adds, mods, dels, seconds, ok) per bundle sent;
                           overlay_flows is read from the dataplane's own model (flows per
                           table), never from a dump of the switch
    etcd watch             watch_revision(applied, cluster) after each applied response,
                           watch_resync(reason) for every full snapshot
    etcd client            etcd_request_error(operation) for every failed request
    reconciler             record_rejected(kind, reason), record_conflict()

IP addresses in use and free are reported only for the networks this host has endpoints in:
the cluster-wide view is a property of etcd, and belongs to one place (`overlayctl`), not to
every agent multiplied by the number of hosts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from overlay.model import TABLE_NAMES

log = logging.getLogger(__name__)

# CNI calls take 10-100 ms here; a slow etcd or a first ADD of a network take seconds.
CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One ovs-ofctl run costs a few ms; a bundle of thousands of flows can take a second.
FLOW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

EndpointCounts = Callable[[], tuple[int, int]]               # (local, remote)
FlowsPerTable = Callable[[], Mapping[int, int]]              # table number -> flows
IpUsage = Callable[[], Mapping[str, tuple[int, int]]]        # network -> (in use, free)


class _StateCollector(Collector):
    """Gauges read from callbacks at scrape time. A failing callback drops its metric from
    that scrape (and logs) instead of failing the whole scrape."""

    def __init__(self) -> None:
        self.endpoints: EndpointCounts | None = None
        self.flows: FlowsPerTable | None = None
        self.ip_usage: IpUsage | None = None

    def collect(self) -> Iterator[Metric]:
        if self.endpoints is not None:
            try:
                local, remote = self.endpoints()
            except Exception:
                log.exception("metrics: cannot count endpoints")
            else:
                fam = GaugeMetricFamily("overlay_endpoints", "Endpoints the agent programs flows "
                                        "for, on this host (local) or elsewhere (remote)",
                                        labels=["location"])
                fam.add_metric(["local"], local)
                fam.add_metric(["remote"], remote)
                yield fam
        if self.flows is not None:
            try:
                per_table = dict(self.flows())
            except Exception:
                log.exception("metrics: cannot count flows")
            else:
                fam = GaugeMetricFamily("overlay_flows", "OpenFlow flows on the integration "
                                        "bridge, per table", labels=["table", "table_name"])
                for table in sorted(per_table):
                    fam.add_metric([str(table), TABLE_NAMES.get(table, "other")], per_table[table])
                yield fam
        if self.ip_usage is not None:
            try:
                usage = dict(self.ip_usage())
            except Exception:
                log.exception("metrics: cannot count IP addresses")
            else:
                fam = GaugeMetricFamily("overlay_ip_addresses", "IP addresses of the networks "
                                        "this host has endpoints in, in use (cluster-wide) and "
                                        "free in the network's recorded subnet",
                                        labels=["network", "state"])
                for network in sorted(usage):
                    used, free = usage[network]
                    fam.add_metric([network, "used"], used)
                    fam.add_metric([network, "free"], free)
                yield fam


class Metrics:
    """Every metric of one agent. Thread-safe: prometheus_client's metric objects lock."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._cni_requests = Counter(
            "overlay_cni_requests", "CNI requests served, by command and CNI result code "
            "(0 = success)", ["command", "code"], registry=r)
        self._cni_duration = Histogram(
            "overlay_cni_request_duration_seconds", "Time to serve a CNI request in the agent",
            ["command", "result"], buckets=CNI_BUCKETS, registry=r)
        self._bundles = Counter(
            "overlay_flow_bundles", "OpenFlow bundles sent to the switch, by result",
            ["result"], registry=r)
        self._flow_ops = Counter(
            "overlay_flow_operations", "Flows added, modified or deleted by bundles that "
            "succeeded", ["operation"], registry=r)
        self._bundle_duration = Histogram(
            "overlay_flow_bundle_duration_seconds", "Time to apply one OpenFlow bundle",
            buckets=FLOW_BUCKETS, registry=r)
        self._watch_revision = Gauge(
            "overlay_etcd_watch_revision", "Last etcd revision the agent has applied", registry=r)
        self._etcd_revision = Gauge(
            "overlay_etcd_revision", "Latest etcd revision the agent has heard of (response "
            "headers)", registry=r)
        self._watch_lag = Gauge(
            "overlay_etcd_watch_lag_revisions", "etcd revisions the agent has heard of but not "
            "applied yet", registry=r)
        self._watch_resyncs = Counter(
            "overlay_etcd_watch_resyncs", "Full snapshots of etcd taken by the watch, by reason",
            ["reason"], registry=r)
        self._etcd_errors = Counter(
            "overlay_etcd_request_errors", "etcd requests that failed, by operation",
            ["operation"], registry=r)
        self._janitor = Counter(
            "overlay_janitor_removals", "Attachments removed by the janitor (container gone "
            "without a DEL)", registry=r)
        self._ovs_restarts = Counter(
            "overlay_ovs_restarts", "ovs-vswitchd restarts detected (flows then reinstalled)",
            registry=r)
        self._rejected = Counter(
            "overlay_records_rejected", "etcd records ignored because they failed verification "
            "(overlay/agent/verify.py), by kind of record and reason", ["kind", "reason"],
            registry=r)
        self._conflicts = Counter(
            "overlay_record_conflicts", "Claims on an address, MAC or VNI that another record "
            "already held (the first created keeps it)", registry=r)
        self._head = 0
        self._head_lock = threading.Lock()
        self._state = _StateCollector()
        r.register(self._state)
        for command in ("ADD", "DEL", "CHECK"):  # present from the first scrape, at zero
            self._cni_requests.labels(command, "0")
        for result in ("ok", "error"):
            self._bundles.labels(result)
        for op in ("add", "modify", "delete"):
            self._flow_ops.labels(op)

    # --- events: CNI (overlay.cni.server) ---------------------------------------------------

    def cni_request(self, command: str, code: int, seconds: float) -> None:
        """One CNI call served: `code` is the CNI error code, 0 for success."""
        self._cni_requests.labels(command, str(code)).inc()
        self._cni_duration.labels(command, "ok" if code == 0 else "error").observe(seconds)

    # --- events: dataplane ------------------------------------------------------------------

    def flow_bundle(self, adds: int, mods: int, dels: int, seconds: float, ok: bool) -> None:
        """One bundle sent to the switch; the flow counts count only when it was applied."""
        self._bundles.labels("ok" if ok else "error").inc()
        self._bundle_duration.observe(seconds)
        if ok:
            self._flow_ops.labels("add").inc(adds)
            self._flow_ops.labels("modify").inc(mods)
            self._flow_ops.labels("delete").inc(dels)

    # --- events: etcd -----------------------------------------------------------------------

    def watch_revision(self, applied: int, cluster: int | None = None) -> None:
        """The watch applied everything up to `applied`; `cluster` is the revision a response
        header reported (etcd's head at that moment), when known."""
        with self._head_lock:  # the head never goes back, whatever order callers report in
            self._head = max(self._head, applied, cluster or 0)
            head = self._head
        self._watch_revision.set(applied)
        self._etcd_revision.set(head)
        self._watch_lag.set(head - applied)

    def watch_resync(self, reason: str) -> None:
        """A full snapshot replaced the watch's state: "start", "compacted", "drift", ..."""
        self._watch_resyncs.labels(reason).inc()

    def etcd_request_error(self, operation: str) -> None:
        """An etcd request failed (unreachable, timeout, refused); `operation` names the verb."""
        self._etcd_errors.labels(operation).inc()

    def record_rejected(self, kind: str, reason: str) -> None:
        """An endpoint, host or network record from etcd was skipped; `reason` is one of
        verify.REASONS."""
        self._rejected.labels(kind, reason).inc()

    def record_conflict(self) -> None:
        self._conflicts.inc()

    # --- events: housekeeping ---------------------------------------------------------------

    def janitor_removed(self, count: int) -> None:
        self._janitor.inc(count)

    def ovs_restart(self) -> None:
        self._ovs_restarts.inc()

    # --- state, read at scrape time ---------------------------------------------------------

    def set_endpoint_source(self, fn: EndpointCounts) -> None:
        self._state.endpoints = fn

    def set_flow_table_source(self, fn: FlowsPerTable) -> None:
        self._state.flows = fn

    def set_ip_usage_source(self, fn: IpUsage) -> None:
        self._state.ip_usage = fn
