"""A restart of ovs-vswitchd while the agent starts is not missed.

The agent programs the switch before it serves CNI (br-phy and the tunnel port, gateway
ports, the flow table; then the janitor runs and the gRPC server starts) and starts its
restart watcher only then. The watcher's reference switch is taken before the agent first
programs the switch (overlay/agent/main.py), so a restart anywhere in between is handled (the
table and the rest put back) as soon as the watcher runs, instead of waiting for the 15 s
check (or forever, for what that check does not look at). Here the restart happens at a point
a test can hold the agent at: while it waits for etcd. Were the reference taken when the
watcher starts, the restarted switch would be the reference, and the restart never counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost


def log_since(h: LabHost, offset: int) -> str:
    with open(h.agent_log, errors="replace") as fh:
        fh.seek(offset)
        return fh.read()


def spawn_agent(h: LabHost) -> None:
    """lab.start_agent without waiting for its socket (it will wait for etcd first)."""
    if os.path.exists(h.socket):
        os.unlink(h.socket)
    steps.spawn([os.path.join(steps.scripts_dir(), "overlay-agent"), "--config", h.agent_config],
                netns=h.netns, log=h.agent_log, pidfile=h.agent_pidfile, host_dir=h.dir)


def ovs_restarts(lab: Lab, h: LabHost) -> float:
    status, body = lab.agent_http(h)
    found = re.search(r"^overlay_ovs_restarts_total (\S+)$", body, re.M)
    assert status == 200 and found, body
    return float(found[1])


def vswitchd_pid(h: LabHost) -> int:
    with open(os.path.join(h.ovs_dir, "ovs-vswitchd.pid")) as fh:
        return int(fh.read().strip())


def test_a_vswitchd_restart_during_agent_start_is_handled(
        lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(hosts=1, network=None)
    h = lab.hosts[0]
    lab.stop_agent(h)
    lab.stop_etcd()  # the next agent stops at its registration: OVS prepared, table not in
    try:
        offset = os.path.getsize(h.agent_log)
        spawn_agent(h)
        steps.wait_for(lambda: "cannot register with etcd yet" in log_since(h, offset),
                       "the agent waiting for etcd", timeout=30, log=h.agent_log)
        old = vswitchd_pid(h)
        steps.stop_pidfile(os.path.join(h.ovs_dir, "ovs-vswitchd.pid"))
        steps.start_vswitchd(h.ovs_dir, h.netns)
        steps.wait_for(lambda: run(["test", "-S", f"{h.ovs_dir}/br-int.mgmt"], check=False)
                       .returncode == 0, "br-int's management socket")
        new = vswitchd_pid(h)
    finally:
        lab.start_etcd()
    steps.wait_for(lambda: os.path.exists(h.socket), "the agent serving CNI", timeout=60,
                   log=h.agent_log)
    steps.wait_for(lambda: ovs_restarts(lab, h) == 1, "the restart handled", timeout=30,
                   log=h.agent_log)
    assert f"ovs-vswitchd restarted (pid {new}, was {old}); reprogramming" in \
        log_since(h, offset)
