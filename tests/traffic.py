"""Continuous traffic for the fault tests (e2e): pings every 20 ms and a paced TCP stream.

What a fault test asserts with it holds on a loaded machine too: the TCP stream survived (no
reset, bytes arrived), and pings sent after the fault were answered (most of them: a broken
datapath answers none). Losses and the longest gap between replies are printed as figures,
never bounded: on this 2-core machine at load 9 a userspace datapath with no fault at all
loses a few pings in 400 and delays replies by 150 ms and more. Whether the switch itself was
disturbed is overlay/lab/faults.py's TableWatch's to say.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab


@dataclass
class Outcome:
    sent: int
    received: int
    longest_gap_ms: float
    tcp_ok: bool
    tcp_mbit: float
    replies: list[tuple[float, int]] = field(default_factory=list)  # (wall-clock time, icmp_seq)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def after(self, moment: float) -> tuple[int, int]:
        """(pings sent after wall-clock `moment`, how many of them were answered). A ping's
        sending time is not printed; a reply's is: pings from the first one answered after
        `moment` on count, which errs towards counting a lost one or two too few."""
        stamps = [t for t, _ in self.replies]
        first = bisect.bisect_left(stamps, moment)
        if first == len(stamps):
            return max(self.sent - (self.replies[-1][1] if self.replies else 0), 1), 0
        seq = self.replies[first][1]
        return self.sent - seq + 1, sum(1 for _, s in self.replies if s >= seq)

    def mostly_answered_after(self, moment: float) -> bool:
        sent, answered = self.after(moment)
        print(f"  after the fault: {answered} of {sent} pings answered")
        return answered * 2 > sent


class Traffic:
    """Pings and a TCP stream from container `src` to `dst_ip` for `seconds`; the iperf3
    server runs in `server_netns` (default: c1's) on `port`.

    The stream is paced (10 Mbit/s): at full speed it fills the userspace datapath's queues on
    two cores and pings drop with no fault at all, which would hide what a fault costs.
    """

    def __init__(self, lab: Lab, seconds: int, *, src: str = "c0", dst_ip: str | None = None,
                 server_netns: str | None = None, port: int = 5201) -> None:
        self.lab, self.seconds = lab, seconds
        c0, c1 = lab.containers[src], lab.containers.get("c1", {})
        dst_ip = dst_ip or c1["ip"]
        run(["iperf3", "-s", "-1", "-D", "-p", str(port), "-I",
             os.path.join(lab.workdir, f"iperf-{port}.pid")], netns=server_netns or c1["netns"])
        time.sleep(0.2)
        self.started = time.time()
        # Output goes to a file: a pipe nobody reads until the end fills after ~800 lines and
        # then stalls ping itself, which looks exactly like an outage.
        self.ping_log = tempfile.TemporaryFile("w+")
        self.ping = subprocess.Popen(in_netns(c0["netns"], [
            # -c, not -w: a deadline would count the last pings still in flight as lost.
            "ping", "-D", "-i", "0.02", "-W", "1", "-c", str(seconds * 50), dst_ip]),
            stdout=self.ping_log, stderr=subprocess.STDOUT, text=True)
        self.tcp = subprocess.Popen(in_netns(c0["netns"], [
            "iperf3", "-c", dst_ip, "-p", str(port), "-t", str(seconds), "-b", "10M", "-J"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self) -> Outcome:
        self.ping.wait(timeout=self.seconds + 30)
        self.ping_log.seek(0)
        ping_out = self.ping_log.read()
        tcp_out, _ = self.tcp.communicate(timeout=self.seconds + 30)
        replies = sorted((float(t), int(s)) for t, s in re.findall(
            r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)", ping_out, re.M))
        stamps = [t for t, _ in replies]
        seen = {s for _, s in replies}
        self.missing = sorted(set(range(1, max(seen, default=0) + 1)) - seen)
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
                          tcp_ok, mbit, replies)
        if self.missing:  # when, relative to the first reply, the lost ones were sent
            print(f"\n  lost icmp_seq {self.missing[:10]} (~{(self.missing[0] - 1) * 0.02:.2f} s in)")
        print(f"\n  pings sent {outcome.sent}, lost {outcome.lost}, longest gap "
              f"{outcome.longest_gap_ms:.0f} ms; TCP {'survived' if tcp_ok else 'BROKE'} "
              f"({mbit:.0f} Mbit/s); load {os.getloadavg()[0]:.1f}")
        if not tcp_ok:
            print(f"  iperf3: {tcp_out[-800:]}")
        return outcome
