"""Network policy at scale, and what it costs a TCP connection (issue 20's benchmark).

Part 1, the flow table of one host: 100 local endpoints, 10,000 remote endpoints and 500
policies (selectors on `app` and `tier`, TCP ports and port ranges, CIDR egress rules, some
drop rules), compiled by the agent's own dataplane (overlay/dataplane/) into a real
ovs-vswitchd (a bridge of a one-host lab, over the persistent OpenFlow channel). It prints:

- flows per host: the policy rules (conjunctive) against the naive product
  (subjects x peers x ports per rule), and the whole table;
- policy put -> switch, p50/p99: one policy edited (its peer selector and port changed),
  from the call until the switch has acknowledged the bundle (the etcd watch's delivery, a
  few ms in bench/scale.py's figures, is not in it);
- label change of a remote endpoint -> switch, p50/p99, the same way;
- the process's RSS with that model (what the agent holds for it, plus Python itself).

Part 2, TCP throughput (iperf3, 5 s, alternated 3 times) between two containers on two hosts
of a netns lab, the server selected by a policy that allows the client on 5201, against an
unpoliced pair in the same lab; the ratio policed / unpoliced (target >= 90 %).

    python bench/policy.py [--remote 10000] [--local 100] [--policies 500] [--events 100]

Needs root; the labs are removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from overlay.dataplane.dataplane import Dataplane  # noqa: E402
from overlay.dataplane.flows import LocalPort, RemoteEndpoint  # noqa: E402
from overlay.dataplane.policy_state import PeerInfo  # noqa: E402
from overlay.lab import containers as ctr  # noqa: E402
from overlay.lab import host as steps  # noqa: E402
from overlay.lab.shell import run  # noqa: E402
from overlay.lab.topology import Lab  # noqa: E402
from overlay.ovs.flow import Resubmit  # noqa: E402
from overlay.ovs.ofctl import Ofctl  # noqa: E402
from overlay.ovs.openflow import Channel  # noqa: E402
from overlay.policy.model import Policy, Selector, parse_policy  # noqa: E402

NET, VNI, APPS, TIERS = "bench", 4242, 100, 5


def log(msg: str) -> None:
    print(msg, flush=True)


def address(i: int) -> str:
    return str(ipaddress.IPv4Address("10.128.0.0") + i + 1)


def mac(i: int) -> str:
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address(i)).packed)


def labels(i: int) -> dict[str, str]:
    return {"app": f"app{i % APPS}", "tier": f"t{i % TIERS}"}


def policy_doc(i: int, variant: int = 0) -> dict[str, object]:
    ports: list[dict[str, object]] = [{"protocol": "TCP", "port": 8000 + (i + variant) % 100}]
    if i % 3 == 0:
        ports.append({"protocol": "TCP", "port": 9000, "endPort": 9015})
    peer = {"endpointSelector": {"matchLabels": {"app": f"app{(i + 1 + variant) % APPS}"}}}
    doc: dict[str, object] = {
        "name": f"p{i}", "network": NET, "priority": 100 + i % 7,
        "endpointSelector": {"matchLabels": {"app": f"app{i % APPS}"}},
        "ingress": [{"from": [peer], "ports": ports,
                     "action": "drop" if i % 10 == 0 else "allow"}]}
    if i % 2 == 0:
        doc["policyTypes"] = ["Ingress", "Egress"]
        doc["egress"] = [{"to": [{"ipBlock": {"cidr": f"10.200.{i % 256}.0/24",
                                              "except": [f"10.200.{i % 256}.0/28"]}}],
                          "ports": [{"protocol": "UDP", "port": 53}]}]
    return doc


def naive_flows(policies: list[Policy], local: dict[str, dict[str, str]],
                everyone: dict[str, dict[str, str]]) -> int:
    """One flow per subject x peer x port of every rule: the product a plain compiler pays."""
    total = 0
    for p in policies:
        subjects = sum(1 for lab in local.values() if p.selector.matches(lab))
        for rules in (p.ingress or (), p.egress or ()):
            for rule in rules:
                peers = sum(sum(1 for lab in everyone.values() if peer.matches(lab))
                            if isinstance(peer, Selector) else 1 for peer in rule.peers) or 1
                ports = sum(len(range(r.port or 0, (r.end_port or r.port or 0) + 1))
                            for r in rule.ports) or 1
                total += subjects * peers * ports
    return total


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def part1(args: argparse.Namespace) -> None:
    lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-bench-policy-"),
              prefix="bp" + uuid.uuid4().hex[:4], tls=False)
    try:
        lab.up(1)
        h = lab.hosts[0]
        run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "add-br", "brp", "--", "set",
             "bridge", "brp", "datapath_type=netdev", "fail_mode=secure"])
        dp = Dataplane(ofctl=Ofctl(rundir=h.ovs_dir), bridge="brp", tunnel_ofport=1, held=True,
                       channel=Channel(rundir=h.ovs_dir, bridge="brp"))
        local = {f"{NET}/c{i}/eth0": labels(i) for i in range(args.local)}
        remote = {f"{NET}/r{i}/eth0": labels(i) for i in range(args.local,
                                                                 args.local + args.remote)}
        started = time.monotonic()
        for n, key in enumerate(local):
            dp.install_endpoint(key, LocalPort(VNI, mac(n), (address(n),), 100 + n))
        dp.update_remote({key: RemoteEndpoint(VNI, mac(n), (address(n),), f"172.31.{n % 200}.9")
                          for n, key in enumerate(remote, args.local)})
        every = {**local, **remote}
        dp.update_peers({key: PeerInfo(NET, (address(n),), lab_)
                         for n, (key, lab_) in enumerate(every.items())})
        policies = [parse_policy(policy_doc(i)) for i in range(args.policies)]
        dp.update_policies({(NET, p.name): p for p in policies})
        dp.release()
        log(f"[1] model built and table pushed in {time.monotonic() - started:.1f} s")
        per_table = dp.flows_per_table()
        policy_flows = sum(n for t, n in per_table.items() if t in (12, 13, 90, 91, 92))
        rules = sum(per_table.values())
        in_switch = Ofctl(rundir=h.ovs_dir).flow_count("brp")
        naive = naive_flows(policies, local, every)
        log(f"[1] flows per host: {rules} in all ({in_switch} in the switch); policy tables "
            f"(12, 13, 90-92): {policy_flows}; the naive product would be {naive} "
            f"({naive / max(policy_flows, 1):.1f}x)")
        floods = [a for i, a in dp.wanted().items() if i.table in (20, 30) and i.priority == 50]
        policed = max(sum(isinstance(x, Resubmit) for x in a) for a in floods)
        log(f"[1] broadcast replication: {len(floods)} rules, "
            f"{max(len(a) for a in floods)} actions at most; {policed} of {args.local} local "
            "ports get their copies through their ingress rules (one more action each)")
        puts = []
        for k in range(args.events):
            i = k % args.policies
            p = parse_policy(policy_doc(i, variant=k // args.policies + 1))
            t0 = time.monotonic()
            dp.update_policies({(NET, p.name): p})
            puts.append(time.monotonic() - t0)
        log(f"[1] policy put -> switch ({args.events} edits): {percentiles(puts)} "
            "(targets: p50 <= 50 ms, p99 <= 200 ms)")
        changes = []
        keys = list(remote)
        for k in range(args.events):
            key = keys[(k * 97) % len(keys)]
            n = args.local + (k * 97) % len(keys)
            t0 = time.monotonic()
            dp.update_peers({key: PeerInfo(NET, (address(n),), labels(n + 1 + k))})
            changes.append(time.monotonic() - t0)
        log(f"[1] remote label change -> switch ({args.events}): {percentiles(changes)}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log(f"[1] RSS of this process with that model: {rss:.0f} MiB (max RSS)")
    finally:
        lab.down()


SERVER_POLICY = {"name": "iperf", "endpointSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"protocol": "TCP", "port": 5201}]}]}


def iperf(lab: Lab, client: str, server: str) -> float:
    c = lab.containers
    out = run(["iperf3", "-c", c[server]["ip"], "-t", "5", "-J"], netns=c[client]["netns"],
              check=False, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 {client} -> {server}: {out.stdout[-300:]} {out.stderr}")
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def part2() -> None:
    lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-bench-policy-"),
              prefix="bq" + uuid.uuid4().hex[:4], tls=True)
    servers = []
    try:
        lab.up(2)
        ctr.define_network(lab, "my-net", 42, "10.0.0.0/24")
        for name, host, lab_ in (("srv", "host0", {"app": "server"}),
                                 ("cli", "host1", {"app": "client"}),
                                 ("osrv", "host0", {"app": "open"}),
                                 ("ocli", "host1", {"app": "client"})):
            out = ctr.add_container(lab, name, host, labels=lab_)
            assert out.returncode == 0, out.stdout
        ctr.wait_converged(lab)
        for name in ("srv", "osrv"):
            servers.append(subprocess.Popen(["ip", "netns", "exec", lab.containers[name]["netns"],
                                             "iperf3", "-s"], stdout=subprocess.DEVNULL))
        done = run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                    "policy", "apply", "-f", "-", "--network", "my-net"], netns=lab.underlay_ns,
                   input=json.dumps(SERVER_POLICY).encode())
        assert done.returncode == 0
        time.sleep(2)
        policed, open_ = [], []
        for _ in range(3):
            policed.append(iperf(lab, "cli", "srv"))
            open_.append(iperf(lab, "ocli", "osrv"))
        p, o = statistics.median(policed), statistics.median(open_)
        log(f"[2] TCP cli -> srv (policed): {p:.2f} Gbit/s; ocli -> osrv (no policy): "
            f"{o:.2f} Gbit/s; policed/unpoliced {p / o * 100:.0f} % (target >= 90 %); runs "
            f"{[round(x, 2) for x in policed]} vs {[round(x, 2) for x in open_]}")
    finally:
        for proc in servers:
            proc.kill()
        lab.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remote", type=int, default=10_000)
    parser.add_argument("--local", type=int, default=100)
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--skip-tcp", action="store_true")
    args = parser.parse_args()
    log(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    part1(args)
    if not args.skip_tcp:
        part2()
    return 0


if __name__ == "__main__":
    sys.exit(main())
