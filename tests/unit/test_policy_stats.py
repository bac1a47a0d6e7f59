"""Reading the policy tables' counters (overlay/agent/policy_stats.py): which rule or port a
dumped rule's counters belong to, and the audit log's rate limit."""

from __future__ import annotations

from typing import Any, cast

from overlay.agent import policy_stats
from overlay.agent.policy_stats import PolicyStats, attribute
from overlay.dataplane.policy_state import RuleLabel, StatsIndex

ALLOW = RuleLabel("my-net", "db", "ingress", 0, "allow", False)
DROP = RuleLabel("my-net", "deny", "ingress", 1, "drop", False)
INDEX = StatsIndex(conj={7: ALLOW}, plain={(90, 500, 42): DROP},
                   denied={(90, 42, "5"): "my-net/c/eth0"},
                   addresses={"my-net/c/eth0": "10.0.0.2"})
DUMP = [
    "cookie=0x1, duration=1s, table=90, n_packets=5, n_bytes=300, priority=900,conj_id=7 "
    "actions=goto_table:91",
    "cookie=0x1, duration=1s, table=90, n_packets=9, n_bytes=900, priority=900,ip,reg0=0x2a,"
    "nw_dst=10.0.0.2 actions=conjunction(7,1/2)",
    "cookie=0x1, duration=1s, table=90, n_packets=2, n_bytes=120, priority=500,ip,reg0=0x2a,"
    "nw_dst=10.0.0.2 actions=drop",
    "cookie=0x1, duration=1s, table=90, n_packets=3, n_bytes=180, priority=1,ip,reg0=0x2a,"
    "reg1=0x5 actions=drop",
    "cookie=0x1, duration=1s, table=90, n_packets=4, n_bytes=240, priority=0 actions=drop",
]


def test_counters_go_to_their_rule_and_port() -> None:
    rules, denied = attribute(DUMP, INDEX)
    assert rules == {ALLOW: (5, 300), DROP: (2, 120)}  # the clause rule's 9 are partial matches
    assert denied == {("ingress", "my-net/c/eth0"): 3}


class FakeDataplane:
    def __init__(self, lines: list[str], index: StatsIndex) -> None:
        self.lines, self.index = lines, index

    def policy_stats_index(self) -> StatsIndex:
        return self.index

    def flow_stats(self, match: str) -> list[str]:
        return self.lines if match == "table=90" else []


def test_audit_lines_for_what_changed_only_and_at_most_max_lines(monkeypatch: Any) -> None:
    lines: list[str] = []
    dp = FakeDataplane(DUMP, INDEX)
    stats = PolicyStats(dataplane=cast(Any, dp), line=lines.append)
    stats.poll()
    assert sorted(lines) == sorted([
        "denied ingress my-net/c/eth0 (10.0.0.2): 3 packets, no rule allowed them",
        "denied ingress my-net policy deny rule 1 (drop): 2 packets, 120 bytes"])
    lines.clear()
    stats.poll()  # nothing new: nothing said
    assert lines == []
    monkeypatch.setattr(policy_stats, "MAX_LINES", 1)
    dp.lines = [line.replace("n_packets=2", "n_packets=4").replace("n_packets=3", "n_packets=6")
                for line in DUMP]
    stats.poll()
    assert len(lines) == 2 and lines[1] == "... and 1 more audit lines this interval"
    exported = {m.name: m.samples for m in stats.collect()}
    assert {s.value for s in exported["overlay_policy_denied_packets"]} == {6}


def test_stop_ends_the_reading_thread() -> None:
    """The agent's stop() stops it (agent.py registers it): no thread reads the switch after."""
    stats = PolicyStats(dataplane=cast(Any, FakeDataplane(DUMP, INDEX)), interval=0.01,
                        line=lambda text: None)
    stats.start()
    assert stats._thread.is_alive()
    stats.stop()
    assert not stats._thread.is_alive()
    stats.stop()  # idempotent


def test_denied_counters_of_ipv6_egress_and_of_ingress_by_port() -> None:
    """Egress knows a port by its source address, IPv6 too; ingress by reg1 (its ofport), which
    also counts the broadcast copies its rules denied."""
    index = StatsIndex(denied={(12, 42, "fd00::2"): "my-net/c/eth0", (90, 42, "7"): "my-net/d/eth0"},
                       addresses={"my-net/c/eth0": "10.0.0.2,fd00::2", "my-net/d/eth0": "10.0.0.3"})
    dump = [
        "cookie=0x1, duration=1s, table=12, n_packets=4, n_bytes=400, priority=1,ipv6,reg0=0x2a,"
        "ipv6_src=fd00::2 actions=drop",
        "cookie=0x1, duration=1s, table=90, n_packets=6, n_bytes=600, priority=1,ipv6,reg0=0x2a,"
        "reg1=0x7 actions=drop",
        "cookie=0x1, duration=1s, table=90, n_packets=1, n_bytes=60, priority=1,ip,reg0=0x2a,"
        "reg1=0x7 actions=drop",
        "cookie=0x1, duration=1s, table=90, n_packets=9, n_bytes=900, priority=2,ip,reg0=0x2a,"
        "reg1=0x8 actions=goto_table:91",  # another port's unpoliced direction: not a denial
    ]
    assert attribute(dump, index)[1] == {("egress", "my-net/c/eth0"): 4,
                                         ("ingress", "my-net/d/eth0"): 7}
