"""Faults under continuous traffic: agent restarts, ovs-vswitchd restart, etcd outage, host loss.

Each test keeps pings (every 20 ms) and a TCP stream (iperf3) running from c0 on host0 to c1
on host1 while the fault happens (tests/traffic.py), and prints what was lost. Timings and
losses are printed, not asserted (the targets live in the issue notes and
docs/failure-model.md): on this 2-core machine CPU load alone costs pings and delays replies.
What is asserted is what a user relies on and load cannot fake: the switch's rules untouched
through a fault that must not touch them (sampled all along, overlay/lab/faults.py's
TableWatch), the TCP stream alive, pings answered after the fault, state as it was, recovery
without help.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from traffic import Traffic

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.faults import TableWatch
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import host_snapshot, with_c0_and_c1


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


def flows_without_stats(lab: Lab, host: int) -> list[str]:
    h = lab.hosts[host]
    out = run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
               f"unix:{h.ovs_dir}/br-int.mgmt"]).stdout
    # The cookie carries the agent's generation, which a restart bumps on purpose.
    return sorted(re.sub(r"cookie=0x[0-9a-f]+, ?", "", line.strip())
                  for line in out.splitlines() if "actions=" in line)


def kill_agent(lab: Lab, host: int, sig: int) -> None:
    h = lab.hosts[host]
    with open(h.agent_pidfile) as fh:
        pid = int(fh.read())
    os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except (ProcessLookupError, ChildProcessError):
            break
        time.sleep(0.02)


def test_baseline_traffic(lab: Lab) -> None:
    """No fault: what the measurement itself shows on this machine, for comparison."""
    traffic = Traffic(lab, 8)
    outcome = traffic.finish()
    assert outcome.tcp_ok and outcome.mostly_answered_after(traffic.started)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful"])
def test_agent_restart_loses_nothing(lab: Lab, sig: int) -> None:
    """Hitless: the rules stay in the switch, untouched, while no agent runs and while the new
    one starts (it adopts the table it finds, wholetable.py)."""
    h0 = lab.hosts[0]
    before = (host_snapshot(lab, h0), flows_without_stats(lab, 0))
    with TableWatch(h0) as watch:
        traffic = Traffic(lab, 8)
        time.sleep(2)
        stopped = time.time()
        kill_agent(lab, 0, sig)
        print(f"\n  agent stopped at ~{time.time() - traffic.started:.2f} s")
        time.sleep(0.5)
        lab.start_agent(h0)
        print(f"  agent serving again at ~{time.time() - traffic.started:.2f} s")
        outcome = traffic.finish()
    print(f"  {watch.summary()}")
    # No rule missing, re-added (its packet counter reset) or added in any sample.
    assert not watch.problems, watch.problems
    assert outcome.tcp_ok and outcome.mostly_answered_after(stopped)
    assert (host_snapshot(lab, h0), flows_without_stats(lab, 0)) == before
    if sig == signal.SIGTERM:  # a graceful stop ends every thread the agent started
        with open(h0.agent_log, errors="replace") as fh:
            said = [line for line in fh if "no thread left" in line or "still running" in line]
        assert said and "no thread left" in said[-1], said[-1:]


def test_vswitchd_restart_is_repaired_by_the_agent(lab: Lab) -> None:
    h0 = lab.hosts[0]
    flows = flows_without_stats(lab, 0)
    ports = host_snapshot(lab, h0)["ovs"]
    traffic = Traffic(lab, 12)  # ends a few seconds after the restart, even on a loaded machine
    time.sleep(2)
    steps.stop_pidfile(os.path.join(h0.ovs_dir, "ovs-vswitchd.pid"))  # SIGTERM, then KILL
    time.sleep(1)
    steps.start_vswitchd(h0.ovs_dir, h0.netns)
    restarted = time.time()
    outcome = traffic.finish()
    assert outcome.after(restarted)[1] > 0  # it came back
    print(f"  traffic interrupted for {outcome.longest_gap_ms / 1000:.1f} s, including the 1 s "
          "the switch was down")
    assert flows_without_stats(lab, 0) == flows  # nothing duplicated, nothing missing
    assert host_snapshot(lab, h0)["ovs"] == ports


@pytest.fixture
def etcd_stopped(lab: Lab) -> Iterator[None]:
    steps.stop_pidfile(os.path.join(lab.workdir, "etcd", "etcd.pid"))
    yield
    lab._up_underlay()


def agent_log_tails(lab: Lab, lines: int = 40) -> str:
    """The last lines of every agent's log, for a failure message."""
    tails = []
    for h in lab.hosts:
        with open(h.agent_log, errors="replace") as fh:
            tails.append(f"--- {h.name}\n" + "".join(fh.readlines()[-lines:]))
    return "\n".join(tails)


def test_etcd_outage_keeps_traffic_and_add_says_try_again(lab: Lab) -> None:
    seconds = int(os.environ.get("OVERLAY_ETCD_OUTAGE", "30"))
    with TableWatch(lab.hosts[0], pause=0.1) as watch0, \
            TableWatch(lab.hosts[1], pause=0.1) as watch1:
        traffic = Traffic(lab, seconds + 4)
        time.sleep(2)
        stopped = time.time()
        steps.stop_pidfile(os.path.join(lab.workdir, "etcd", "etcd.pid"))
        try:
            time.sleep(2)
            started = time.monotonic()
            refused = ctr.add_container(lab, "late", "host1")
            print(f"\n  ADD during the outage: code {refused.json()['code']} after "
                  f"{time.monotonic() - started:.1f} s")
            assert refused.returncode != 0 and refused.json()["code"] == 11
            time.sleep(max(0, seconds - 4))
        finally:
            lab._up_underlay()
        outcome = traffic.finish()
    print(f"  {watch0.summary()}; {watch1.summary()}")
    # The dataplane does not depend on etcd: neither switch lost or changed a rule while etcd
    # was away or came back, the stream lived, and the pings from its stop on were answered.
    assert not watch0.problems and not watch1.problems, \
        (watch0.problems, watch1.problems, agent_log_tails(lab))
    assert outcome.tcp_ok and outcome.mostly_answered_after(stopped), (outcome, agent_log_tails(lab))
    # Back: ADD works, and host0's watch (resumed from its last revision) learns the newcomer.
    deadline = time.monotonic() + 30
    while (added := ctr.add_container(lab, "late", "host1")).returncode != 0:
        assert added.json()["code"] == 11 and time.monotonic() < deadline, added.stdout
        time.sleep(1)
    ctr.wait_converged(lab)
    late = ctr.ping(lab.containers["c0"]["netns"], lab.containers["late"]["ip"])
    assert late.ok, late.summary
    assert ctr.del_container(lab, "late").returncode == 0


def test_host_loss_stops_tunnels_to_it_and_recovery_needs_no_help(lab: Lab) -> None:
    h1 = lab.hosts[1]
    kill_agent(lab, 1, signal.SIGKILL)
    lost_at = time.monotonic()
    deadline = lost_at + 45  # lease TTL 10 s, then the lab's host_grace of 5 s
    while any(f"set_field:{h1.vtep}->tun_dst" in f for f in flows_without_stats(lab, 0)):
        assert time.monotonic() < deadline, "host0 still sends to the lost host"
        time.sleep(0.1)
    print(f"\n  host0 stopped sending to host1 {time.monotonic() - lost_at:.1f} s after its agent "
          "died (lease TTL 10 s + host_grace 5 s)")
    held = run(lab.etcdctl("get", "--prefix", "/overlay/v1/ipam/my-net/", "--keys-only"),
               netns=lab.underlay_ns).stdout.split()
    assert f"/overlay/v1/ipam/my-net/{lab.containers['c1']['ip']}" in held  # still reserved
    lab.start_agent(h1)
    ctr.wait_converged(lab)
    back = ctr.ping(lab.containers["c0"]["netns"], lab.containers["c1"]["ip"])
    assert back.ok, back.summary
