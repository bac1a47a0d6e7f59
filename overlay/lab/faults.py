"""Faults done to a lab host, and how long the overlay takes to heal them.

Shared by the tests that assert the healing (tests/integration/test_metrics.py, the e2e
suites) and the benchmark that prints its figures (bench/ovs_restart.py), so that both
restart the switch the same way and judge "healed" by the same rule.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import LabHost


def switch_table(h: LabHost, bridge: str = "br-int") -> list[str] | None:
    """The switch's rules without cookies and statistics, sorted; None if it does not answer.
    (A restarted agent bumps the cookie's generation on purpose; the rules are the point.)"""
    proc = run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
                f"unix:{h.ovs_dir}/{bridge}.mgmt"], check=False)
    if proc.returncode != 0:
        return None
    return sorted(re.sub(r"cookie=0x[0-9a-f]+, ?", "", line.strip())
                  for line in proc.stdout.splitlines() if "actions=" in line)


_STATS = re.compile(r"(cookie|duration|n_packets|n_bytes|idle_age|hard_age)=[^,]+, ?")
_PACKETS = re.compile(r"n_packets=(\d+)")


def switch_rules(h: LabHost, bridge: str = "br-int") -> dict[str, int] | None:
    """rule (without cookie and statistics) -> its packet counter; None if the switch does not
    answer. A counter that goes down means the rule was deleted and added again: a rule
    modified in place, or replaced by an add of the same match (OpenFlow 1.3+), keeps it."""
    proc = run(["ovs-ofctl", "-O", "OpenFlow14", "dump-flows",
                f"unix:{h.ovs_dir}/{bridge}.mgmt"], check=False)
    if proc.returncode != 0:
        return None
    rules = {}
    for line in proc.stdout.splitlines():
        if "actions=" in line:
            packets = _PACKETS.search(line)
            rules[_STATS.sub("", line.strip())] = int(packets.group(1)) if packets else 0
    return rules


class TableWatch:
    """Samples a host's switch table from __enter__ to __exit__, as fast as ovs-ofctl answers
    (`pause` between samples), and records what a hitless fault must never do to the rules
    `concerned` selects (all by default): a rule (table, priority, match) missing from one
    sample, or deleted and added again (its packet counter went down); with `exact`, also a
    rule's actions changed or a rule added. Without `exact`, rules may be modified in place
    and added (a container added meanwhile does both), never taken away.

    This is the load-independent form of "the datapath was not disturbed": a busy machine
    delays ping replies and drops the odd one with no fault at all, but it cannot make a rule
    vanish from the switch. A gap shorter than one sample (an ovs-ofctl run: 30 ms at load 5,
    120 ms at load 19) is not seen by the samples, but the packet counters show any
    delete-and-add of a rule that had counted packets (the traffic's), however short."""

    def __init__(self, h: LabHost, *, concerned: Callable[[str], bool] = lambda rule: True,
                 exact: bool = True, pause: float = 0.02, bridge: str = "br-int") -> None:
        self.host, self._concerned, self._exact = h, concerned, exact
        self._pause, self._bridge = pause, bridge
        self.baseline: dict[str, tuple[str, int]] = {}  # identity -> (actions, packets)
        self.samples = 0
        self.problems: list[str] = []  # the first few, as sentences
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"table-watch-{h.name}",
                                        daemon=True)

    def _sample(self) -> dict[str, tuple[str, int]] | None:
        rules = switch_rules(self.host, self._bridge)
        if rules is None:
            return None
        out = {}
        for rule, packets in rules.items():
            identity, _, actions = rule.partition(" actions=")
            if self._concerned(rule):
                out[identity] = (actions, packets)
        return out

    def __enter__(self) -> TableWatch:
        first = self._sample()
        if not first:
            raise RuntimeError(f"{self.host.name}'s switch has no rules to watch")
        self.baseline = first
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        packets = {identity: n for identity, (_, n) in self.baseline.items()}
        started = time.monotonic()
        while not self._stop.wait(self._pause):
            rules = self._sample()
            self.samples += 1
            at = f"{time.monotonic() - started:.2f} s in"
            if rules is None:
                self._note(f"{at}: the switch did not answer")
                continue
            missing = [i for i in self.baseline if i not in rules]
            reset = [i for i, n in packets.items() if i in rules and rules[i][1] < n]
            changed = [i for i, (a, _) in self.baseline.items() if i in rules and rules[i][0] != a]
            added = [i for i in rules if i not in self.baseline]
            if missing:
                self._note(f"{at}: {len(missing)} rules missing, e.g. {missing[0]}")
            if reset:
                self._note(f"{at}: {len(reset)} rules deleted and added again (counter went "
                           f"down), e.g. {reset[0]}")
            if self._exact and changed:
                self._note(f"{at}: {len(changed)} rules' actions changed, e.g. {changed[0]}")
            if self._exact and added:
                self._note(f"{at}: {len(added)} rules added, e.g. {added[0]}")
            packets.update((i, rules[i][1]) for i in packets if i in rules)

    def _note(self, problem: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(problem)

    def summary(self) -> str:
        return (f"{self.host.name}: {len(self.baseline)} rules watched in {self.samples} "
                f"samples, {len(self.problems)} problems")


def vswitchd_pid(h: LabHost) -> int:
    with open(os.path.join(h.ovs_dir, "ovs-vswitchd.pid")) as fh:
        return int(fh.read().strip())


def restart_vswitchd(h: LabHost, *, kill: bool = False, bridge: str = "br-int",
                     timeout: float = 30.0) -> float:
    """Stop host `h`'s ovs-vswitchd (SIGTERM, or SIGKILL with `kill`), start a new one and
    wait until the switch holds again exactly the rules it held before. Returns the seconds
    from the new ovs-vswitchd's start to that moment. Raises TimeoutError after `timeout`."""
    before = switch_table(h, bridge)
    if not before:
        raise RuntimeError(f"{h.name}'s switch has no rules to compare with")
    pidfile = os.path.join(h.ovs_dir, "ovs-vswitchd.pid")
    if kill:
        pid = vswitchd_pid(h)
        os.kill(pid, signal.SIGKILL)
        steps.wait_for(lambda: not _alive(pid), "ovs-vswitchd to die")
    steps.stop_pidfile(pidfile)  # SIGTERM (a no-op after the SIGKILL but the pidfile's removal)
    started = time.monotonic()
    steps.start_vswitchd(h.ovs_dir, h.netns)
    while (table := switch_table(h, bridge)) != before:
        if time.monotonic() - started > timeout:
            missing = len(set(before) - set(table or []))
            raise TimeoutError(f"{h.name}'s switch still lacks {missing} of {len(before)} "
                               f"rules {timeout:.0f} s after ovs-vswitchd restarted")
        time.sleep(0.01)
    return time.monotonic() - started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        return True  # not our child: it exists
    except ProcessLookupError:
        return False
    return True
