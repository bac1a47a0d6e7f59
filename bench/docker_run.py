"""`docker run` with the overlay's driver against `--net none`: what networking adds.

A one-host netns lab with its dockerd (overlay.lab.dockerd) and my-net created with `-d ovs
--ipam-driver ovs`, one container left running in it (so the network's gateway exists on the
host, as on a host in use). Then, alternately, `docker run --rm --net my-net overlay-busybox true` and
`docker run --rm --net none overlay-busybox true`, `--runs` times each (20) in the same run,
timed from the client's start to its exit. Prints every figure's p50 and max for both, and the
difference of the p50s: the time our driver adds to a container's life (RequestAddress,
CreateEndpoint, Join, ProgramExternalConnectivity, then Leave, DeleteEndpoint, ReleaseAddress,
each a round trip to the agent, and the CNI ADD and DEL steps behind them).

Run as root: `make bench` (or `.venv/bin/python bench/docker_run.py`). The machine's load goes
with the figures (printed first): dockerd and containerd are slow to start a container on a
loaded 2-core host, with or without a network.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from overlay.lab import containers as ctr  # noqa: E402
from overlay.lab import dockerd  # noqa: E402
from overlay.lab.topology import Lab, LabHost  # noqa: E402


def timed_run(h: LabHost, net: str) -> float:
    started = time.perf_counter()
    dockerd.docker(h, "run", "--rm", "--net", net, dockerd.IMAGE, "true")
    return time.perf_counter() - started


def agent_steps(h: LabHost, verb: str) -> list[float]:
    """The agent's own time for each Docker endpoint's ADD (Join) or Leave, from its log
    lines ("ADD my-net docker-.../eth -> ... (35 ms: ...)", "Leave my-net docker-... (9 ms)")."""
    pattern = re.compile(rf" {verb} my-net docker-\S+.*?\((\d+) ms")
    with open(h.agent_log) as fh:
        return [float(m.group(1)) / 1000 for m in map(pattern.search, fh) if m]


def line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"  {name:<14} p50 {statistics.median(ms):7.0f} ms   max {max(ms):7.0f} ms   " \
           f"(n={len(ms)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    reason = dockerd.available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-bench-docker-"),
              prefix="b" + uuid.uuid4().hex[:5])
    try:
        lab.up(1)
        ctr.define_network(lab, "my-net", 42, "10.0.0.0/24")
        dockerd.up(lab)
        h = lab.host("host0")
        dockerd.docker(h, "network", "create", "-d", "ovs", "--ipam-driver", "ovs",
                       "--subnet", "10.0.0.0/24", "-o", "vxlanID=42", "my-net")
        # A container that stays: the network's gateway on this host (made by its first Join,
        # removed with its last Leave, ~50-100 ms each) is there, as on a host in use.
        dockerd.docker(h, "run", "-d", "--net", "my-net", dockerd.IMAGE, "sleep", "3600")
        timed_run(h, "my-net")
        timed_run(h, "none")
        with open("/proc/loadavg") as fh:
            print(f"docker run --rm overlay-busybox true, {args.runs} runs each, alternating "
                  f"(load {' '.join(fh.read().split()[:3])})")
        ours: list[float] = []
        none: list[float] = []
        for _ in range(args.runs):
            ours.append(timed_run(h, "my-net"))
            none.append(timed_run(h, "none"))
        print(line("--net my-net", ours))
        print(line("--net none", none))
        adds, dels = agent_steps(h, "ADD")[-args.runs:], agent_steps(h, "Leave")[-args.runs:]
        if adds and dels:
            print(line("of it: ADD", adds))
            print(line("        Leave", dels))
        extra = (statistics.median(ours) - statistics.median(none)) * 1000
        print(f"  networking adds {extra:.0f} ms at p50 "
              f"({statistics.median(ours) / statistics.median(none):.2f}x)")
        return 0
    finally:
        dockerd.down(lab)
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
