"""A 3-member etcd cluster: stopping any one member changes nothing a user can see.

Agents are given all three members. With each member stopped in turn (leader or not), traffic
between hosts keeps flowing without a gap, ADD and DEL succeed, and a container added while
the member is down is reachable from the other host.

"Changes nothing" is asserted on the mechanism: every host's switch holds exactly the rules it
held before. The pings and the TCP stream check that on real traffic: no gap of 250 ms, the
stream survives, and isolated losses stay under 2 %. This machine's userspace datapath loses
single pings with no fault at all (measured today on a quiet machine with this lab: 0-3 of 400,
each alone), so a 1 % bound failed about one run in four without any fault to blame; a control
plane that touched the flows would show as a gap, a changed table, or both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab.faults import switch_table
from overlay.lab.shell import run
from overlay.lab.topology import Lab

sys.path.insert(0, os.path.dirname(__file__))
from test_faults import Traffic  # noqa: E402


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2, etcd_members=3)
    for name, host in (("c0", "host0"), ("c1", "host1")):
        out = ctr.add_container(lab, name, host)
        assert out.returncode == 0, out.stdout
    ctr.wait_converged(lab)
    return lab


@pytest.mark.parametrize("member", [0, 1, 2])
def test_one_member_down_changes_nothing(lab: Lab, member: int) -> None:
    leader = run(lab.etcdctl("endpoint", "status", "-w", "table"), netns=lab.underlay_ns).stdout
    tables = {h.name: switch_table(h) for h in lab.hosts}
    traffic = Traffic(lab, 8)
    lab.stop_etcd_member(member)
    try:
        name = f"m{member}-late"
        added = ctr.add_container(lab, name, "host1")
        assert added.returncode == 0, added.stdout
        started = time.monotonic()
        while not (reach := ctr.ping(lab.containers["c0"]["netns"], lab.containers[name]["ip"],
                                     count=1)).ok:
            assert time.monotonic() - started < 20, reach.summary
        print(f"\n  a container added with m{member} down was reachable from the other host "
              f"after {time.monotonic() - started:.1f} s")
        assert ctr.del_container(lab, name).returncode == 0
    finally:
        lab.start_etcd_member(member)
    outcome = traffic.finish()
    row = next(line for line in leader.splitlines() if f"{lab.member_ips[member]}:2379" in line)
    print(f"  member m{member} stopped ({'leader' if ' true ' in row else 'follower'})")
    assert {h.name: switch_table(h) for h in lab.hosts} == tables
    assert outcome.longest_gap_ms < 250 and outcome.lost <= outcome.sent // 50 and outcome.tcp_ok
