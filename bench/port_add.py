"""How long adding a container's port to br-int takes: with the wait for ovs-vswitchd's whole
reconfiguration (ovs-vsctl's default, and ovsdbapp's Open_vSwitch transactions) against the
agent's way, commit then wait for the port's ofport only (overlay/ovs/ovsdb.py,
`vswitchd_applied`).

The first kind of transaction holds ovsdbapp's one IDL thread until ovs-vswitchd has applied
the configuration, so every other OVSDB transaction of the agent queues behind it: ten ADDs at
once each waited for the reconfigurations of the ports before theirs. A 1-host netns lab;
`--ports` veth pairs in its host namespace, added to br-int serially (3 per round) and all at
once from as many threads, then deleted; the two ways alternate round by round (which goes
first too), so that load from elsewhere lands on both alike. Prints p50/mean/max of each, and
the load average. Not in `make bench` (a probe of one step); run as root:

    .venv/bin/python bench/port_add.py [--ports 10] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from overlay.lab.host import OvsPaths  # noqa: E402
from overlay.lab.shell import run  # noqa: E402
from overlay.lab.topology import Lab  # noqa: E402
from overlay.ovs.ovsdb import OWNER, OWNER_KEY, Ovsdb  # noqa: E402

Add = Callable[[Ovsdb, str, str], int]


def add_vswitchd_applied(ovs: Ovsdb, bridge: str, name: str) -> int:
    return ovs.ensure_port(bridge, name, external_ids={OWNER_KEY: OWNER}, vswitchd_applied=True)


def add_ofport_only(ovs: Ovsdb, bridge: str, name: str) -> int:
    return ovs.ensure_port(bridge, name, external_ids={OWNER_KEY: OWNER}, vswitchd_applied=False)


WAYS: dict[str, Add] = {"vswitchd applied": add_vswitchd_applied, "ofport only": add_ofport_only}


def timed(fn: Add, ovs: Ovsdb, bridge: str, name: str, into: list[float]) -> None:
    start = time.perf_counter()
    fn(ovs, bridge, name)
    into.append((time.perf_counter() - start) * 1000)


def at_once(fn: Add, ovs: Ovsdb, bridge: str, names: list[str], into: list[float]) -> None:
    gate = threading.Barrier(len(names))

    def one(name: str) -> None:
        gate.wait()
        timed(fn, ovs, bridge, name, into)
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, default=10, help="ports added at once")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (each way once a round)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("port_add: needs root (network namespaces, OVS)", file=sys.stderr)
        return 1
    prefix = "p" + uuid.uuid4().hex[:5]
    tmp = tempfile.mkdtemp(prefix="overlay-bench-")
    lab = Lab(workdir=os.path.join(tmp, "lab"), prefix=prefix, tls=False)
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        lab.up(1)
        netns = lab.hosts[0].netns
        ovs = Ovsdb(endpoint=OvsPaths(lab.hosts[0].ovs_dir).endpoint, timeout=60)
        names = [f"{prefix}v{i}" for i in range(args.ports)]
        for name in names:
            run(["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name",
                 f"{name}p"])
            run(["ip", "-n", netns, "link", "set", name, "up"])
        try:
            for r in range(args.rounds):
                for way in (list(WAYS) if r % 2 == 0 else list(reversed(WAYS))):
                    for name in names[:3]:
                        timed(WAYS[way], ovs, lab.bridge, name,
                              samples.setdefault((way, "serial"), []))
                        ovs.delete_port(name)
                    at_once(WAYS[way], ovs, lab.bridge, names,
                            samples.setdefault((way, f"{args.ports} at once"), []))
                    for name in names:
                        ovs.delete_port(name)
        finally:
            ovs.close()
        print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for (way, mode), ms in samples.items():
            print(f"{way:<17} {mode:<11} n={len(ms):3}  p50 {statistics.median(ms):7.1f} ms  "
                  f"mean {statistics.mean(ms):7.1f}  max {max(ms):7.1f}")
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
