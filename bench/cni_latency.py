"""CNI ADD and DEL latency: our `ovs` plugin against the reference `bridge` + `host-local`.

Two references: the plain bridge (L2 only), and the bridge with `isGateway` and `ipMasq`,
which gives a container what our default netconf gives it (a gateway address and a default
route to it, masquerade to the outside); our ADD pays for those too (docs/architecture.md,
"Gateway"). Both ratios are printed.

All go through the same libcni driver (tests/libcni/driver.go), run inside a 1-host netns
lab's host namespace, as a runtime on that host would: the agent serves `ovs`, and `bridge`
creates its bridge there rather than in the root namespace. A sample is the libcni call alone
(exec of the plugin included), measured by the driver; starting the driver and `ip netns exec`
are reported separately, since a runtime pays neither.

    python bench/cni_latency.py [--serial 30] [--parallel 10] [--rounds 3] [--budget 150]

First on host: one container at a time (ADD, then DEL) in a network with no other container on
the host, so every ADD creates what the network needs there (our gateway) and every DEL removes
it. Serial: the same while the host keeps one resident container in the network, the common
case (only the attachment is made and undone). Parallel (resident kept too): `--parallel` ADDs
at once, then as many DELs at once, `--rounds` times. Prints p50/p95/p99 per plugin, the ratio ours/reference
and the target checks (ours, serial ADD: p50 <= 120 ms, p99 <= 300 ms, and at most 4x the plain
bridge + host-local, issue 7) as PASS or MISS; the exit
status does not depend on it. Needs root. Everything it makes (lab, namespaces, temp dirs) is
removed at the end, also after an error or Ctrl-C; `--budget` bounds the measuring in seconds.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the driver's builder is shared with the tests

from libcni.build import (  # noqa: E402
    REFERENCE_PLUGINS,
    DriverOutcome,
    Libcni,
    build_driver,
    why_not_buildable,
    write_conflist,
)

from overlay.lab import containers as ctr  # noqa: E402
from overlay.lab.shell import add_netns, del_netns  # noqa: E402
from overlay.lab.topology import Lab  # noqa: E402

TARGET_P50_MS, TARGET_P99_MS = 120.0, 300.0
TARGET_RATIO = 4.0  # ours / bridge+host-local, serial ADD p50 (issue 7)
CALL_TIMEOUT = 30.0
OURS, REFERENCE, REFERENCE_GW = "ovs", "bridge+host-local", "bridge-gw+masq"


@dataclass
class Series:
    ms: list[float] = field(default_factory=list)    # libcni call (plugin exec included)
    wall: list[float] = field(default_factory=list)  # + driver start-up and `ip netns exec`
    failures: list[str] = field(default_factory=list)


@dataclass
class Subject:
    name: str
    conflist: str
    driver: Libcni
    series: dict[tuple[str, str], Series] = field(default_factory=dict)  # (mode, op) -> samples
    live: set[tuple[str, str]] = field(default_factory=set)              # (container, netns)

    def call(self, mode: str, op: str, container_id: str, netns: str) -> None:
        start = time.monotonic()
        out: DriverOutcome = self.driver(self.conflist, op, netns=netns, container_id=container_id,
                                         timing=True, timeout=CALL_TIMEOUT)
        wall = (time.monotonic() - start) * 1000
        s = self.series.setdefault((mode, op), Series())
        if op == "add":
            self.live.add((container_id, netns))
        if out.returncode != 0 or out.ms is None:
            s.failures.append(f"{op} {container_id}: {out}")
            return
        s.ms.append(out.ms)
        s.wall.append(wall)
        if op == "del":
            self.live.discard((container_id, netns))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49], q[94], q[98]


def at_once(calls: list[Callable[[], None]]) -> None:
    """Run the calls in threads released together."""
    gate = threading.Barrier(len(calls))

    def worker(fn: Callable[[], None]) -> None:
        gate.wait()
        fn()
    threads = [threading.Thread(target=worker, args=(fn,)) for fn in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(subject: Subject, pool: list[str], args: argparse.Namespace, deadline: float) -> bool:
    """Warm-up, serial, parallel. Returns False when the time budget ran out."""
    tag = subject.name.split("+")[0]

    def say(what: str) -> None:
        print(f"  {subject.name}: {what} ({max(0.0, deadline - time.monotonic()):.0f} s of the "
              "budget left)", flush=True)

    say("warm-up")
    for i in range(2):  # the first ADD of a network creates it (etcd record, bridge): not measured
        subject.call("warmup", "add", f"bench-{tag}-w{i}", pool[0])
        subject.call("warmup", "del", f"bench-{tag}-w{i}", pool[0])
    def serial(mode: str, what: str) -> bool:
        """args.serial ADD/DEL pairs one after the other; False when the budget ran out."""
        for i in range(args.serial):
            if time.monotonic() > deadline:
                return False
            if i % 10 == 0:
                say(f"{what} {i}/{args.serial}")
            subject.call(mode, "add", f"bench-{tag}-{mode[0]}{i}", pool[0])
            subject.call(mode, "del", f"bench-{tag}-{mode[0]}{i}", pool[0])
        return True

    # The network's first container on the host: each ADD creates what the network needs there
    # (our gateway port, addresses, NAT rules; the reference's gateway address and masquerade
    # rule), each DEL of it removes ours again.
    if not serial("first", "first on the host, serial ADD/DEL"):
        return False
    # The common case: the host already has a container in the network (kept in its own netns
    # until the end), so an ADD only attaches.
    subject.call("warmup", "add", f"bench-{tag}-resident", pool[-1])
    if not serial("serial", "serial ADD/DEL"):
        return False
    for r in range(args.rounds):
        if time.monotonic() > deadline:
            return False
        say(f"parallel round {r + 1}/{args.rounds}, {args.parallel} at once")
        ids = [(f"bench-{tag}-p{r}-{j}", pool[j]) for j in range(args.parallel)]
        for op in ("add", "del"):
            at_once([functools.partial(subject.call, "parallel", op, c, n) for c, n in ids])
    subject.call("warmup", "del", f"bench-{tag}-resident", pool[-1])
    return True


def report(subjects: list[Subject], args: argparse.Namespace, complete: bool) -> None:
    header = f"{'plugin':<18} {'mode':<22} {'op':<4} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} " \
             f"{'p99 ms':>8} {'max ms':>8} {'wall p50':>9}"
    print(header)
    print("-" * len(header))
    modes = [("first", "first on host, serial"), ("serial", "serial (1 at a time)"),
             ("parallel", f"parallel ({args.parallel} at once)")]
    p50s: dict[tuple[str, str, str], float] = {}
    for s in subjects:
        for mode, label in modes:
            for op in ("add", "del"):
                series = s.series.get((mode, op), Series())
                if not series.ms:
                    print(f"{s.name:<18} {label:<22} {op.upper():<4}   0  (no samples)")
                    continue
                p50, p95, p99 = percentiles(series.ms)
                p50s[(s.name, mode, op)] = p50
                wall = statistics.median(series.wall)
                print(f"{s.name:<18} {label:<22} {op.upper():<4} {len(series.ms):>3} {p50:>8.1f} "
                      f"{p95:>8.1f} {p99:>8.1f} {max(series.ms):>8.1f} {wall:>9.1f}")
    print("(ms: the libcni call, plugin exec included; wall: plus driver start and `ip netns exec`)")
    for reference, what in ((REFERENCE, "plain bridge, no gateway"),
                            (REFERENCE_GW, "isGateway + ipMasq, what our default netconf gives")):
        print(f"\nratio ours/{reference} (p50; {what}):")
        for mode, label in modes:
            for op in ("add", "del"):
                ours, ref = p50s.get((OURS, mode, op)), p50s.get((reference, mode, op))
                if ours and ref:
                    print(f"  {label:<22} {op.upper():<4} {ours / ref:5.2f}x  "
                          f"({ours:.1f} / {ref:.1f} ms)")
    failures = [f for s in subjects for series in s.series.values() for f in series.failures]
    if failures:
        print(f"\n{len(failures)} failed call(s), not in the figures; first: {failures[0]}")
    if not complete:
        print("\nthe time budget ran out: fewer samples than asked for")
    print("\ntarget (ours, serial ADD, the network already on the host):")
    serial_add = subjects[0].series.get(("serial", "add"), Series()).ms
    if not serial_add:
        print("  no samples: MISS")
        return
    p50, _, p99 = percentiles(serial_add)
    for what, value, limit in (("p50", p50, TARGET_P50_MS), ("p99", p99, TARGET_P99_MS)):
        verdict = "PASS" if value <= limit else "MISS"
        print(f"  {what} {value:6.1f} ms <= {limit:.0f} ms: {verdict}")
    plain = p50s.get((REFERENCE, "serial", "add"))
    if plain:
        ratio = p50 / plain
        print(f"  p50 {ratio:.2f}x {REFERENCE} <= {TARGET_RATIO:.0f}x: "
              f"{'PASS' if ratio <= TARGET_RATIO else 'MISS'}")


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, OVS)"
    reason = why_not_buildable()
    if reason:
        return reason
    for plugin in ("bridge", "host-local"):
        if not os.access(os.path.join(REFERENCE_PLUGINS, plugin), os.X_OK):
            return f"{REFERENCE_PLUGINS}/{plugin} is missing (apt: containernetworking-plugins)"
    missing = [t for t in ("ovsdb-server", "ovs-vswitchd", "etcd", "etcdctl") if not shutil.which(t)]
    return f"missing: {', '.join(missing)} (run `make deps`)" if missing else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serial", type=int, default=30, help="serial iterations (ADD+DEL)")
    parser.add_argument("--parallel", type=int, default=10, help="containers per parallel round")
    parser.add_argument("--rounds", type=int, default=3, help="parallel rounds")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for measuring, at most")
    args = parser.parse_args(argv)
    reason = why_not_runnable()
    if reason:
        print(f"cni_latency: cannot run: {reason}", file=sys.stderr)
        return 1

    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="overlay-bench-")
    prefix = "b" + uuid.uuid4().hex[:5]
    lab = Lab(workdir=os.path.join(tmp, "lab"), prefix=prefix, tls=False)  # figures comparable
    # one netns per parallel container, and one more for the resident container
    pool = [f"{prefix}-c{i}" for i in range(max(1, args.parallel) + 1)]
    subjects: list[Subject] = []
    try:
        print(f"building the libcni driver and a 1-host lab ({prefix}, {tmp}) ...", flush=True)
        binary = build_driver(os.path.join(tmp, "driver"))
        lab.up(1)
        ctr.define_network(lab, "bench-net", 4242, "10.40.0.0/16")
        h = lab.hosts[0]
        for name in pool:
            add_netns(name)
        ours: dict[str, Any] = {"cniVersion": "1.0.0", "name": "bench-net", "plugins": [
            {"type": "ovs", "bridge": "br-int", "vxlanID": 4242, "agentSocket": h.socket,
             "ipam": {"type": "overlay", "subnet": "10.40.0.0/16"}}]}
        reference: dict[str, Any] = {"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [
            {"type": "bridge", "bridge": "cnibench0",
             "ipam": {"type": "host-local", "subnet": "10.41.0.0/16",
                      "dataDir": os.path.join(tmp, "host-local")}}]}
        # What our default netconf gives a container, from the reference plugins: a gateway
        # address on the bridge and a default route to it (isGateway), masquerade to the
        # outside (ipMasq). Our ADD pays for both (the network's gateway and its NAT rules).
        reference_gw: dict[str, Any] = {"cniVersion": "1.0.0", "name": "bench-refgw", "plugins": [
            {"type": "bridge", "bridge": "cnibench1", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "subnet": "10.42.0.0/16",
                      "dataDir": os.path.join(tmp, "host-local")}}]}
        driver = Libcni(binary, [lab.cni_bin, REFERENCE_PLUGINS], os.path.join(tmp, "cache"),
                        in_netns=h.netns)
        subjects = [Subject(OURS, write_conflist(tmp, ours, "ours.conflist"), driver),
                    Subject(REFERENCE, write_conflist(tmp, reference, "ref.conflist"), driver),
                    Subject(REFERENCE_GW, write_conflist(tmp, reference_gw, "refgw.conflist"),
                            driver)]
        print(f"lab up in {time.monotonic() - started:.1f} s; measuring ...", flush=True)
        deadline = time.monotonic() + args.budget
        complete = all([measure(s, [f"/var/run/netns/{n}" for n in pool], args, deadline)
                        for s in subjects])
        print(f"measured in {time.monotonic() - deadline + args.budget:.1f} s "
              f"({args.serial} serial, {args.rounds}x{args.parallel} parallel per plugin)\n")
        report(subjects, args, complete)
        return 0
    finally:
        for s in subjects:  # whatever an interrupted or failed run left attached
            for container_id, netns in sorted(s.live):
                s.driver(s.conflist, "del", netns=netns, container_id=container_id,
                         timeout=CALL_TIMEOUT)
        for name in pool:
            del_netns(name)
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"\ncleaned up; {time.monotonic() - started:.1f} s in all", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
