"""Pod sandbox start through CRI: our conflist against bridge + host-local, on one containerd.

What a kubelet user waits for: RunPodSandbox until it returns with the sandbox ready (the
pause container started, the pod's network namespace made, the CNI chain run through libcni).
One containerd 1.6 with its CRI plugin (tests/containerd/cri.py) in a 1-host netns lab's host
namespace; its CNI configuration directory holds one conflist at a time:

    ours        ovs (the lab's agent) + portmap
    reference   bridge + host-local + portmap   (the reference plugins, plain bridge: the
                                                reference of bench/cni_latency.py's ratios)

portmap is chained in both, as a cluster with hostPorts has it, so the difference is the main
plugin. The conflist is switched by replacing the file; containerd reloads it, and the switch
is awaited through CRI Status (verbose), which names the loaded network. Order ABBA (ours,
reference, reference, ours: half the samples in each block), so that a burst of load from
elsewhere on the machine lands on both alike.

    python bench/cri_sandbox.py [--serial 20] [--parallel 10] [--rounds 2]

Serial: one RunPodSandbox at a time (StopPodSandbox + RemovePodSandbox after each, not timed).
Parallel: `--parallel` RunPodSandbox calls released together, `--rounds` times; each call's own
latency is a sample. Prints p50/p99 per subject and mode, the ratios ours/reference and issue
19's targets (<= 1.3x serial, <= 1.5x at 10 at once) as PASS or MISS; the exit status does not
depend on them. Needs root, containerd, runc and busybox-static. Everything it makes (lab,
containerd, pods, temp dirs) is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(ROOT / "tests"))  # the containerd and CRI helpers are the tests'

import cni_profile  # noqa: E402  (bench/, beside this script)
from containerd.cri import (  # noqa: E402
    PAUSE_ENTRYPOINT,
    PAUSE_IMAGE,
    Cri,
    CriContainerd,
)
from containerd.image import is_static, oci_archive  # noqa: E402
from containerd.runtime import why_not_runnable  # noqa: E402
from libcni.build import REFERENCE_PLUGINS  # noqa: E402

from overlay.lab import containers as ctr  # noqa: E402
from overlay.lab.topology import Lab  # noqa: E402

NETWORK, VNI, SUBNET = "cri-bench", 4343, "10.43.0.0/16"
OURS, REFERENCE = "ovs", "bridge+host-local"
TARGETS = (("serial", 1.3), ("parallel", 1.5))  # issue 19: ours / reference, p50
PLUGINS = ("loopback", "portmap", "bridge", "host-local")
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


@dataclass
class Subject:
    name: str
    conflist: dict[str, Any]
    ms: dict[str, list[float]] = field(default_factory=dict)  # mode -> RunPodSandbox ms
    failures: list[str] = field(default_factory=list)


def conflists(lab: Lab, tmp: str) -> list[Subject]:
    ours = ctr.read_conflist(lab.hosts[0], NETWORK)
    ours["plugins"].append(PORTMAP)
    reference = {"cniVersion": "1.0.0", "name": "cri-bench-ref", "plugins": [
        {"type": "bridge", "bridge": "cribench0",
         "ipam": {"type": "host-local", "subnet": "10.44.0.0/16",
                  "dataDir": os.path.join(tmp, "host-local")}}, PORTMAP]}
    return [Subject(OURS, ours), Subject(REFERENCE, reference)]


class Bench:
    def __init__(self, daemon: CriContainerd, conf_dir: str) -> None:
        self.daemon, self.conf_dir = daemon, conf_dir
        self.cri: Cri = daemon.client()
        self.run_id = uuid.uuid4().hex[:6]
        self.count = 0
        self.lock = threading.Lock()
        self.mode_of: dict[str, str] = {}  # our sandboxes (their CNI container ids) -> mode

    def use(self, subject: Subject, timeout: float = 30) -> None:
        """Make `subject`'s conflist the one containerd uses, and wait until it does."""
        path = os.path.join(self.conf_dir, "10-bench.conflist")
        with open(path + ".tmp", "w") as fh:
            json.dump(subject.conflist, fh)
        os.replace(path + ".tmp", path)
        deadline = time.monotonic() + timeout
        while f'"Name": "{subject.conflist["name"]}"' not in self.loaded():
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not load {subject.name}'s conflist: "
                                   f"{self.loaded()[:500]}")
            time.sleep(0.1)
        self.sandbox(subject, "warmup")  # the first of a network creates it: not measured

    def loaded(self) -> str:
        return json.dumps(self.cri.network_status()["info"].get("cniconfig", {}))

    def sandbox(self, subject: Subject, mode: str) -> None:
        """One RunPodSandbox, timed to its return with the sandbox ready; then Stop, Remove."""
        with self.lock:
            self.count += 1
            name = f"b{self.run_id}-{self.count}"
        config = self.cri.sandbox_config(name, "bench")
        start = time.monotonic()
        try:
            pod = self.cri.run_pod(config)
        except Exception as exc:  # a failed start is reported, not measured
            subject.failures.append(f"{mode} {name}: {str(exc)[:300]}")
            return
        ms = (time.monotonic() - start) * 1000
        if subject.name == OURS:
            self.mode_of[pod] = mode
        if self.cri.pod_status(pod).state != 0:  # SANDBOX_READY
            subject.failures.append(f"{mode} {name}: not ready after RunPodSandbox")
        elif mode != "warmup":
            subject.ms.setdefault(mode, []).append(ms)
        self.cri.stop_pod(pod)
        self.cri.remove_pod(pod)


def at_once(calls: list[Callable[[], None]]) -> None:
    gate = threading.Barrier(len(calls))

    def worker(fn: Callable[[], None]) -> None:
        gate.wait()
        fn()
    threads = [threading.Thread(target=worker, args=(fn,)) for fn in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(bench: Bench, subjects: list[Subject], args: argparse.Namespace) -> None:
    ours, ref = subjects
    order = [ours, ref, ref, ours]  # ABBA
    for block, subject in enumerate(order):
        print(f"  block {block + 1}/4: {subject.name} (load {load()})", flush=True)
        bench.use(subject)
        for _ in range(args.serial // 2):
            bench.sandbox(subject, "serial")
        for _ in range(max(1, args.rounds // 2)):
            at_once([lambda s=subject: bench.sandbox(s, "parallel")  # type: ignore[misc]
                     for _ in range(args.parallel)])


def percentile(samples: list[float], p: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def report(subjects: list[Subject], args: argparse.Namespace) -> None:
    header = f"{'conflist':<28} {'mode':<20} {'n':>3} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    p50: dict[tuple[str, str], float] = {}
    labels = {"serial": "serial", "parallel": f"{args.parallel} at once"}
    for s in subjects:
        for mode, label in labels.items():
            ms = s.ms.get(mode, [])
            if not ms:
                print(f"{s.name + ' + portmap':<28} {label:<20}   0  (no samples)")
                continue
            p50[s.name, mode] = percentile(ms, 50)
            print(f"{s.name + ' + portmap':<28} {label:<20} {len(ms):>3} {p50[s.name, mode]:>8.1f} "
                  f"{percentile(ms, 99):>8.1f} {max(ms):>8.1f}")
    print("(ms: RunPodSandbox until it returned with the sandbox ready, through containerd's CRI)")
    print(f"\nratio ours/{REFERENCE} (p50) and issue 19's targets (never the exit status):")
    for mode, limit in TARGETS:
        ours, ref = p50.get((OURS, mode)), p50.get((REFERENCE, mode))
        if ours is None or ref is None:
            print(f"  {labels[mode]:<20} no samples: MISS")
            continue
        verdict = "PASS" if ours / ref <= limit else "MISS"
        print(f"  {labels[mode]:<20} {ours / ref:5.2f}x ({ours:.1f} / {ref:.1f} ms) "
              f"<= {limit}x: {verdict}")
    for s in subjects:
        if s.failures:
            print(f"\n{s.name}: {len(s.failures)} failed start(s), not in the figures; "
                  f"first: {s.failures[0]}")


def agent_share(bench: Bench, agent_log: str, subjects: list[Subject]) -> None:
    """How much of our sandbox start is the agent's ADD (its own log line of each ADD)."""
    with open(agent_log, errors="replace") as fh:
        by_mode = cni_profile.agent_steps(fh, bench.mode_of, {})
    print("\nof our RunPodSandbox p50, the agent's ADD (its steps, from its log; p50):")
    for mode in ("serial", "parallel"):
        ours = subjects[0].ms.get(mode, [])
        steps = by_mode.get(mode)
        if not ours or steps is None or not steps.totals:
            print(f"  {mode}: no samples")
            continue
        print(f"  {mode:<9} agent ADD {statistics.median(steps.totals):6.1f} ms of "
              f"{percentile(ours, 50):6.1f} ms")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_containerd(lab: Lab, tmp: str) -> tuple[CriContainerd, str]:
    conf_dir, bin_dir = os.path.join(tmp, "net.d"), os.path.join(tmp, "bin")
    os.makedirs(conf_dir)
    os.makedirs(bin_dir)
    os.symlink(os.path.join(lab.cni_bin, "ovs"), os.path.join(bin_dir, "ovs"))
    for plugin in PLUGINS:
        os.symlink(os.path.join(REFERENCE_PLUGINS, plugin), os.path.join(bin_dir, plugin))
    daemon = CriContainerd(os.path.join(tmp, "containerd"), lab.hosts[0].netns,
                           cni_conf_dir=conf_dir, cni_bin_dir=bin_dir)
    daemon.start()
    archive = os.path.join(tmp, "pause.tar")
    with open(archive, "wb") as fh:
        fh.write(oci_archive(PAUSE_IMAGE, PAUSE_ENTRYPOINT))
    daemon.import_image(archive)
    return daemon, conf_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serial", type=int, default=20, help="sandboxes one at a time")
    parser.add_argument("--parallel", type=int, default=10, help="sandboxes started at once")
    parser.add_argument("--rounds", type=int, default=2, help="parallel rounds (even: ABBA)")
    args = parser.parse_args()
    reason = why_not_runnable() or (None if is_static() else "busybox is not static")
    if os.geteuid() != 0 or reason:
        print(f"cri_sandbox: skipped: {reason or 'needs root'}")
        return 0
    tmp = tempfile.mkdtemp(prefix="overlay-bench-cri-")
    lab = Lab(workdir=os.path.join(tmp, "lab"), prefix="b" + uuid.uuid4().hex[:5], tls=False)
    daemon: CriContainerd | None = None
    try:
        print(f"CRI sandbox start: 1-host lab {lab.prefix}, containerd with the CRI plugin "
              f"(load {load()}) ...", flush=True)
        lab.up(1)
        ctr.define_network(lab, NETWORK, VNI, SUBNET)
        daemon, conf_dir = start_containerd(lab, tmp)
        subjects = conflists(lab, tmp)
        bench = Bench(daemon, conf_dir)
        measure(bench, subjects, args)
        print(f"load average at the end: {load()} (2 cores shared)\n")
        report(subjects, args)
        agent_share(bench, lab.hosts[0].agent_log, subjects)
    finally:
        if daemon is not None:
            daemon.stop()
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
