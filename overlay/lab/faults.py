"""Faults done to a lab host, and how long the overlay takes to heal them.

Shared by the tests that assert the healing (tests/integration/test_metrics.py, the e2e
suites) and the benchmark that prints its figures (bench/ovs_restart.py), so that both
restart the switch the same way and judge "healed" by the same rule.
"""

from __future__ import annotations

import os
import re
import signal
import time

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
