"""Egress through the distributed gateway, against the host itself and east-west, in one run.

A two-host netns lab; c0 on host0 and c1 on host1 in my-net, attached by the real plugin. A
server in the underlay namespace (172.31.0.254) stands for the outside world.

- TCP throughput (iperf3, 5 s): c0 -> underlay (through the gateway, masqueraded), host0 ->
  underlay (the host's own stack, no overlay), c0 -> c1 (east-west over VXLAN), in `--rounds`
  rounds (3), each in a rotated order, so that a burst of load elsewhere on the machine lands on
  all three paths alike; the medians and their ratios are the result, each round is shown;
- TCP connect latency (median of N connects, each a fresh connection and a one-byte answer):
  c0 -> underlay and host0 -> underlay.

Prints the figures and the ratios; the target is egress >= 90 % of east-west.
Run as root: `make bench` (or `.venv/bin/python bench/egress.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from overlay.lab import containers as ctr  # noqa: E402
from overlay.lab.shell import in_netns, run  # noqa: E402
from overlay.lab.topology import Lab  # noqa: E402

SERVER = "172.31.0.254"

CONNECT = r"""
import socket, statistics, sys, time
n, ip, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
times = []
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((ip, port), timeout=5)
    s.recv(1)
    times.append((time.perf_counter() - t) * 1000)
    s.close()
print(statistics.median(times), sorted(times)[int(n * 0.95) - 1])
"""

ANSWER = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(128)
while True:
    c, _ = srv.accept(); c.sendall(b"x"); c.close()
"""


def iperf(netns: str, server_ns: str, ip: str, seconds: int, port: int) -> float:
    """Gbit/s from netns to an iperf3 server started in server_ns."""
    srv = subprocess.Popen(in_netns(server_ns, ["iperf3", "-s", "-1", "-p", str(port)]),
                           stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = run(["iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J"], netns=netns,
                  timeout=seconds + 60)
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.wait(timeout=30)


def up_with_two_containers(lab: Lab) -> bool:
    """The 2-host lab with c0 on host0 and c1 on host1 in my-net, converged. False (and why, on
    stderr) if an ADD failed."""
    print("bringing up a 2-host lab ...", flush=True)
    lab.up(2)
    ctr.define_network(lab, ctr.DEFAULT_NETWORK, 42, "10.0.0.0/24")
    for name, host in (("c0", "host0"), ("c1", "host1")):
        out = ctr.add_container(lab, name, host)
        if out.returncode != 0:
            print(f"ADD {name} failed: {out.stdout}", file=sys.stderr)
            return False
    ctr.wait_converged(lab)
    return True


def connect_ms(netns: str, count: int, port: int = 7070) -> tuple[float, float]:
    out = run([sys.executable, "-c", CONNECT, str(count), SERVER, str(port)], netns=netns,
              timeout=300).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-bench-egress-"),
              prefix="b" + uuid.uuid4().hex[:5], tls=False)
    answer = None
    try:
        if not up_with_two_containers(lab):
            return 1
        c0, c1, h0 = lab.containers["c0"], lab.containers["c1"], lab.host("host0")
        answer = subprocess.Popen(in_netns(lab.underlay_ns, [sys.executable, "-c", ANSWER,
                                                             SERVER, "7070"]))
        time.sleep(0.5)
        s = args.seconds
        paths = {"egress": lambda port: iperf(c0["netns"], lab.underlay_ns, SERVER, s, port),
                 "host": lambda port: iperf(h0.netns, lab.underlay_ns, SERVER, s, port),
                 "east-west": lambda port: iperf(c0["netns"], c1["netns"], c1["ip"], s, port)}
        figures: dict[str, list[float]] = {name: [] for name in paths}
        print(f"load average before measuring: {os.getloadavg()[0]:.2f} "
              f"({os.cpu_count()} cores)", flush=True)
        names = list(paths)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for i, name in enumerate(order):
                figures[name].append(paths[name](5301 + i))
            print(f"  round {r + 1}: " + ", ".join(f"{n} {figures[n][-1]:.2f}" for n in names)
                  + f" Gbit/s; egress / east-west {figures['egress'][-1] / figures['east-west'][-1]:.0%}",
                  flush=True)
        egress, from_host, east_west = (statistics.median(figures[n]) for n in names)
        gw_p50, gw_p95 = connect_ms(c0["netns"], args.connects)
        host_p50, host_p95 = connect_ms(h0.netns, args.connects)
        print(f"\nTCP throughput, iperf3 {s} s, one stream, median of {args.rounds} rounds:")
        print(f"  container -> underlay via gateway (SNAT): {egress:6.2f} Gbit/s")
        print(f"  host -> underlay (the host's own stack):  {from_host:6.2f} Gbit/s")
        print(f"  container -> container, east-west VXLAN:  {east_west:6.2f} Gbit/s")
        print(f"  egress / host      = {egress / from_host:6.1%}")
        print(f"  egress / east-west = {egress / east_west:6.1%}   (target >= 90%: "
              f"{'met' if egress >= 0.9 * east_west else 'NOT met'})")
        print(f"TCP connect + 1-byte answer, {args.connects} connections:")
        print(f"  container via gateway: p50 {gw_p50:.3f} ms, p95 {gw_p95:.3f} ms")
        print(f"  host itself:           p50 {host_p50:.3f} ms, p95 {host_p95:.3f} ms")
        print(f"  ratio p50 gateway / host = {gw_p50 / host_p50:.2f}")
        return 0
    finally:
        if answer is not None:
            answer.terminate()
            answer.wait()
        lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
