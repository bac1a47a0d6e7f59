"""Faults under continuous traffic: agent restarts, ovs-vswitchd restart, etcd outage, host loss.

Each test keeps pings (every 20 ms) and a TCP stream (iperf3) running from c0 on host0 to c1
on host1 while the fault happens, and prints what was lost. Timings are printed, not asserted
(the targets live in the issue notes and docs/failure-model.md); what is asserted is what a
user relies on: nothing lost where nothing had to be, state as it was, recovery without help.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab
from overlay_fixtures import host_snapshot, with_c0_and_c1


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


@dataclass
class Outcome:
    sent: int
    received: int
    longest_gap_ms: float
    tcp_ok: bool
    tcp_mbit: float

    @property
    def lost(self) -> int:
        return self.sent - self.received


class Traffic:
    """Pings and a TCP stream from c0 to c1 for `seconds`.

    The stream is paced (10 Mbit/s): at full speed it fills the userspace datapath's queues on
    two cores and pings drop with no fault at all, which would hide what a fault costs.
    """

    def __init__(self, lab: Lab, seconds: int) -> None:
        self.lab, self.seconds = lab, seconds
        c0, c1 = lab.containers["c0"], lab.containers["c1"]
        run(["iperf3", "-s", "-1", "-D", "-I", os.path.join(lab.workdir, "iperf.pid")],
            netns=c1["netns"])
        time.sleep(0.2)
        self.started = time.time()
        # Output goes to a file: a pipe nobody reads until the end fills after ~800 lines and
        # then stalls ping itself, which looks exactly like an outage.
        self.ping_log = tempfile.TemporaryFile("w+")
        self.ping = subprocess.Popen(in_netns(c0["netns"], [
            # -c, not -w: a deadline would count the last pings still in flight as lost.
            "ping", "-D", "-i", "0.02", "-W", "1", "-c", str(seconds * 50), c1["ip"]]),
            stdout=self.ping_log, stderr=subprocess.STDOUT, text=True)
        self.tcp = subprocess.Popen(in_netns(c0["netns"], [
            "iperf3", "-c", c1["ip"], "-t", str(seconds), "-b", "10M", "-J"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self) -> Outcome:
        self.ping.wait(timeout=self.seconds + 30)
        self.ping_log.seek(0)
        ping_out = self.ping_log.read()
        tcp_out, _ = self.tcp.communicate(timeout=self.seconds + 30)
        replies = re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)", ping_out, re.M)
        stamps = [float(t) for t, _ in replies]
        seen = {int(s) for _, s in replies}
        self.missing = sorted(set(range(1, max(seen, default=0) + 1)) - seen)
        self.first_stamp = stamps[0] if stamps else 0.0
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)] or [0.0]
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out)
        assert summary, ping_out[-500:]
        try:
            report = json.loads(tcp_out)
            tcp_ok = "error" not in report and report["end"]["sum_received"]["bytes"] > 0
            mbit = report["end"]["sum_received"]["bits_per_second"] / 1e6 if tcp_ok else 0.0
        except (ValueError, KeyError):
            tcp_ok, mbit = False, 0.0
        outcome = Outcome(int(summary.group(1)), int(summary.group(2)), max(gaps) * 1000,
                          tcp_ok, mbit)
        if self.missing:  # when, relative to the first reply, the lost ones were sent
            print(f"\n  lost icmp_seq {self.missing[:10]} (~{(self.missing[0] - 1) * 0.02:.2f} s in)")
        print(f"\n  pings sent {outcome.sent}, lost {outcome.lost}, longest gap "
              f"{outcome.longest_gap_ms:.0f} ms; TCP {'survived' if tcp_ok else 'BROKE'} "
              f"({mbit:.0f} Mbit/s)")
        return outcome


def flows_without_stats(lab: Lab, host: int) -> list[str]:
    h = lab.hosts[host]
    out = run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
               f"unix:{h.ovs_dir}/br-int.mgmt"]).stdout
    # The cookie carries the agent's generation, which a restart bumps on purpose.
    return sorted(re.sub(r"cookie=0x[0-9a-f]+, ?", "", line.strip())
                  for line in out.splitlines() if "actions=" in line)


def packet_counts(lab: Lab, host: int) -> dict[str, int]:
    """n_packets per flow (keyed without cookie and stats)."""
    out = run(["ovs-ofctl", "-O", "OpenFlow14", "dump-flows",
               f"unix:{lab.hosts[host].ovs_dir}/br-int.mgmt"]).stdout
    counts = {}
    for line in out.splitlines():
        if "actions=" not in line:
            continue
        packets = re.search(r"n_packets=(\d+)", line)
        key = re.sub(r"(cookie|duration|n_packets|n_bytes|idle_age|hard_age)=[^,]+, ?", "",
                     line.strip())
        counts[key] = int(packets.group(1)) if packets else 0
    return counts


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
    outcome = Traffic(lab, 8).finish()
    assert outcome.longest_gap_ms < 150 and outcome.tcp_ok


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful"])
def test_agent_restart_loses_nothing(lab: Lab, sig: int) -> None:
    h0 = lab.hosts[0]
    before = (host_snapshot(lab, h0), flows_without_stats(lab, 0))
    traffic = Traffic(lab, 8)
    time.sleep(2)
    counts_before = packet_counts(lab, 0)
    kill_agent(lab, 0, sig)
    print(f"\n  agent stopped at ~{time.time() - traffic.started:.2f} s")
    time.sleep(0.5)
    lab.start_agent(h0)
    print(f"  agent serving again at ~{time.time() - traffic.started:.2f} s")
    counts_after = packet_counts(lab, 0)
    outcome = traffic.finish()
    # No interruption: a 150 ms gap would be 7 pings in a row. Single pings do drop now and
    # then on this 2-core machine with no fault at all (see test_baseline_traffic).
    assert outcome.longest_gap_ms < 150 and outcome.lost <= outcome.sent // 100 and outcome.tcp_ok
    # The flows were modified in place, never deleted and re-added: their counters only grew.
    assert all(counts_after.get(k, -1) >= n for k, n in counts_before.items()), (
        [k for k, n in counts_before.items() if counts_after.get(k, -1) < n])
    assert (host_snapshot(lab, h0), flows_without_stats(lab, 0)) == before


def test_vswitchd_restart_is_repaired_by_the_agent(lab: Lab) -> None:
    h0 = lab.hosts[0]
    flows = flows_without_stats(lab, 0)
    ports = host_snapshot(lab, h0)["ovs"]
    traffic = Traffic(lab, 10)
    time.sleep(2)
    steps.stop_pidfile(os.path.join(h0.ovs_dir, "ovs-vswitchd.pid"))  # SIGTERM, then KILL
    time.sleep(1)
    steps.start_vswitchd(h0.ovs_dir, h0.netns)
    outcome = traffic.finish()
    assert outcome.received > 0 and outcome.longest_gap_ms < 10_000  # it came back
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
    traffic = Traffic(lab, seconds + 4)
    time.sleep(2)
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
    # The dataplane does not depend on etcd: no window without replies. (Restarting etcd is a
    # burst of CPU on this 2-core machine, which has cost an odd single ping, never a gap.)
    assert outcome.longest_gap_ms < 250 and outcome.lost <= outcome.sent // 100 and outcome.tcp_ok, \
        (outcome, agent_log_tails(lab))  # a gap here was seen once and not explained yet
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
