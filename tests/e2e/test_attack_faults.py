"""Faults that must heal by themselves, done to a real 2-host lab under traffic (issue 15, 7).

ovs-vswitchd restarts on host1 (SIGTERM and SIGKILL in turn) while c0 on host0 pings c1 on
host1 every 20 ms: each restart is counted once by host1's agent, the switch gets its whole
table back, and c0 -> c1 answers again after every one of them, with no help. The time each
took is printed (bench/ovs_restart.py has the figures), not asserted.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest

from overlay.lab.faults import restart_vswitchd
from overlay.lab.shell import in_netns
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import eventually, with_c0_and_c1

RESTARTS = 4


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


def restarts_counted(lab: Lab, h: LabHost) -> float:
    status, body = lab.agent_http(h, "/metrics")
    assert status == 200
    found = re.search(r"^overlay_ovs_restarts_total (\S+)$", body, re.M)
    assert found, body[:500]
    return float(found.group(1))


def replies_after(log: tempfile._TemporaryFileWrapper[str], since: float) -> int:
    log.seek(0)
    return sum(float(t) > since for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", log.read(),
                                                    re.M))


def test_vswitchd_restarts_on_host1_heal_under_a_cross_host_ping(lab: Lab) -> None:
    h1, c0, c1 = lab.host("host1"), lab.containers["c0"], lab.containers["c1"]
    counted = restarts_counted(lab, h1)
    with tempfile.NamedTemporaryFile("w+") as log:
        ping = subprocess.Popen(in_netns(c0["netns"], ["ping", "-D", "-i", "0.02", "-W", "1",
                                                       c1["ip"]]),
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            assert wait_for(lambda: replies_after(log, 0) > 0), "no reply before any fault"
            for i in range(1, RESTARTS + 1):
                seconds = restart_vswitchd(h1, kill=i % 2 == 0)
                healed = time.time()
                # Traffic resumed: replies to pings sent after the table came back.
                assert wait_for(lambda t=healed: replies_after(log, t) >= 5), (  # type: ignore[misc]
                    f"c0 -> c1 did not resume after restart {i}")
                assert wait_for(lambda n=i: restarts_counted(lab, h1) == counted + n), (  # type: ignore[misc]
                    f"restart {i} not counted exactly once: {restarts_counted(lab, h1)}")
                print(f"\n  restart {i} ({'SIGKILL' if i % 2 == 0 else 'SIGTERM'}): flows back "
                      f"in {seconds * 1000:.0f} ms, c0 -> c1 answering again")
        finally:
            ping.terminate()
            ping.wait(timeout=10)
    assert restarts_counted(lab, h1) == counted + RESTARTS


wait_for = functools.partial(eventually, interval=0.05)
