"""Per-rule counters of network policy, and the audit log of denied connections.

Both read the switch's own counters of the policy tables (EGRESS 12, INGRESS 90), polled every
INTERVAL seconds on one thread: a rule's conj_id rule (or its plain rules) counts the packets
the rule decided; each policed port's default-deny rule counts what no rule allowed it. Only
the first packet of a connection is judged by a rule (the rest pass by conntrack), so the
figures are new connections' first packets and bytes, and denied attempts.

Why counters and not a packet-in per denied packet (a `controller` action with a meter): a
flood of denied packets would become a flood to the agent, however metered (reject rules
take that price for their answers, within their meter: agent/rejects.py; a log line needs no
packet). A counter costs the switch
nothing, and reading it every INTERVAL seconds rate-limits the audit log by construction: at
most one line per rule or port per interval, and at most MAX_LINES lines per interval (the
rest are summed into one line). The price: a line names the rule and the local port, and how
many packets, not each packet's peer address and port.

Lines go to the logger "overlay.policy.audit" (the agent's log) as
  denied ingress my-net/ctr/eth0 (10.0.0.2): 3 packets, no rule allowed them
  denied ingress my-net policy deny-web rule 0 (drop): 2 packets, 120 bytes
  allowed egress my-net policy web-out rule 1: 1 packets, 60 bytes      (rules with log: true)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.policy_state import RuleLabel, StatsIndex
from overlay.model import EGRESS, INGRESS

log = logging.getLogger(__name__)
audit = logging.getLogger("overlay.policy.audit")

INTERVAL = 2.0
MAX_LINES = 50
_FIELD = re.compile(r"(n_packets|n_bytes|priority|conj_id|reg0|nw_src|nw_dst|ipv6_src|ipv6_dst|reg1"
                    r"|table)=([^, ]+)")
RuleCounts = dict[RuleLabel, tuple[int, int]]


def parse(line: str) -> dict[str, str]:
    return dict(_FIELD.findall(line))


def attribute(lines: list[str], index: StatsIndex) -> tuple[RuleCounts, dict[tuple[str, str], int]]:
    """Counters of the dumped rules -> (rule -> (packets, bytes), (direction, port key) ->
    denied packets). Clause rules (conjunction actions) count partial matches: skipped."""
    rules: RuleCounts = {}
    denied: dict[tuple[str, str], int] = {}
    for line in lines:
        if "conjunction(" in line:
            continue
        f = parse(line)
        packets, size = int(f.get("n_packets", 0)), int(f.get("n_bytes", 0))
        table, priority = int(f.get("table", 0)), int(f.get("priority", 32768))
        vni = int(f["reg0"], 0) if "reg0" in f else None
        label = index.conj.get(int(f["conj_id"])) if "conj_id" in f else \
            index.plain.get((table, priority, vni)) if vni is not None else None
        if label is not None:
            old = rules.get(label, (0, 0))
            rules[label] = (old[0] + packets, old[1] + size)
            continue
        # Egress knows its port by source address, ingress by reg1 (policy_flows.py).
        ip = (f.get("nw_src") or f.get("ipv6_src")) if table == EGRESS else \
            str(int(f["reg1"], 0)) if "reg1" in f else None
        key = index.denied.get((table, vni, ip)) if vni is not None and ip else None
        if key is not None and "actions=drop" in line:
            direction = "egress" if table == EGRESS else "ingress"
            denied[(direction, key)] = denied.get((direction, key), 0) + packets
    return rules, denied


class PolicyStats(Collector):
    """Polls the counters (start()), logs what changed, and serves them to Prometheus."""

    def __init__(self, *, dataplane: Dataplane, interval: float = INTERVAL,
                 line: Callable[[str], None] = audit.info) -> None:
        self._dataplane = dataplane
        self._interval = interval
        self._line = line
        self._lock = threading.Lock()
        self._rules: RuleCounts = {}
        self._denied: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread (a poll in progress finishes first). Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 (the switch may be restarting: next round)
                log.debug("policy counters not read", exc_info=True)

    def poll(self) -> None:
        index = self._dataplane.policy_stats_index()
        if not index.conj and not index.denied:
            return
        lines = [line for table in (EGRESS, INGRESS)
                 for line in self._dataplane.flow_stats(f"table={table}")]
        rules, denied = attribute(lines, index)
        with self._lock:
            before_rules, before_denied = self._rules, self._denied
            self._rules, self._denied = rules, denied
        self._audit(rules, before_rules, denied, before_denied, index)

    def _audit(self, rules: RuleCounts, before_rules: RuleCounts,
               denied: dict[tuple[str, str], int], before_denied: dict[tuple[str, str], int],
               index: StatsIndex) -> None:
        out: list[str] = []
        for (direction, key), packets in sorted(denied.items()):
            new = packets - before_denied.get((direction, key), 0)
            if new > 0:
                ips = index.addresses.get(key, "")
                out.append(f"denied {direction} {key} ({ips}): {new} packets, no rule allowed "
                           "them")
        for label, (packets, size) in sorted(rules.items(), key=lambda kv: repr(kv[0])):
            old = before_rules.get(label, (0, 0))
            if packets > old[0] and (label.action != "allow" or label.log):
                verb = "allowed" if label.action == "allow" else "denied"
                out.append(f"{verb} {label.direction} {label.network} policy {label.policy} "
                           f"rule {label.index} ({label.action}): {packets - old[0]} packets, "
                           f"{size - old[1]} bytes")
        for text in out[:MAX_LINES]:
            self._line(text)
        if len(out) > MAX_LINES:
            self._line(f"... and {len(out) - MAX_LINES} more audit lines this interval")

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            rules, denied = dict(self._rules), dict(self._denied)
        labels = ["network", "policy", "direction", "rule", "action"]
        packets = CounterMetricFamily("overlay_policy_rule_packets", "First packets of new "
                                      "connections a policy rule decided", labels=labels)
        size = CounterMetricFamily("overlay_policy_rule_bytes", "Bytes of the packets a policy "
                                   "rule decided", labels=labels)
        for label, (p, b) in sorted(rules.items(), key=lambda kv: repr(kv[0])):
            values = [label.network, label.policy, label.direction, str(label.index),
                      label.action]
            packets.add_metric(values, p)
            size.add_metric(values, b)
        drops = CounterMetricFamily("overlay_policy_denied_packets", "Packets to or from a "
                                    "policed endpoint that no rule allowed (default deny)",
                                    labels=["direction", "endpoint"])
        for (direction, key), p in sorted(denied.items()):
            drops.add_metric([direction, key], p)
        yield from (packets, size, drops)
