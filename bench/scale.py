"""Control plane at scale: one real agent, a real etcd and OVS, and many simulated hosts.

A 1-host netns lab (underlay 172.31.0.0/16) runs the agent; container c0 on it joins network
`scale` (VNI 4242), so the agent follows that network. The benchmark then writes simulated
hosts (leased host records, 50 endpoints each, VTEPs on the lab's own underlay) and their
endpoints into the lab's etcd as agents write them: one key per put, from 4 writers at once.
At each size (default 1,000, 10,000 and 50,000 remote endpoints) it prints:

- burst: time from the last put of the step until the switch holds every flow;
- one event -> flow in the switch, p50/p99, for a put and for a delete (seen through an
  OpenFlow flow monitor on br-int, so the switch itself is the witness);
- the agent's RSS and CPU seconds, and its RSS again after the restart below;
- bytes the agent's host received from etcd per minute while idle (an iptables counter on the
  host's namespace, so TCP/IP headers included);
- records the agent rejected and conflicts it found (from its log; expected 0);
- agent restart: from starting the new agent process (the old one stopped) until it serves,
  with its whole table verified (installed, or found identical in the switch: the OVSDB key
  overlay-flow-verified names the new run) and every rule of the network in the switch;
- ovs-vswitchd restart: from starting a new ovs-vswitchd (the old one stopped) until the
  switch holds every rule of the network again (the agent noticed, and pushed its table);
and each figure's ratio to the previous size. At the end, a `del --prefix` of every endpoint
(one DeleteRange) and the time until the switch holds none of them.

    python bench/scale.py [--sizes 1000,10000,50000] [--events 30] [--idle 30]

Needs root. The measuring half runs inside the lab's underlay namespace (where etcd is), as
`scale.py --inside`; the lab is removed at the end, also after an error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETWORK, VNI, SUBNET = "scale", 4242, "10.128.0.0/14"
PER_HOST = 50
TABLE_FORWARD = 20


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the orchestrating half (root namespace) -------------------------------------------------

def orchestrate(args: argparse.Namespace) -> int:
    from overlay.lab import containers as ctr
    from overlay.lab.topology import Lab

    lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-bench-scale-"),
              prefix="bs" + uuid.uuid4().hex[:4], underlay="172.31.0.0/16",
              tls=False)  # plain etcd: its simulated hosts write as no one (figures comparable)
    try:
        log(f"[setup] lab {lab.prefix}: etcd, one host with OVS and the agent ...")
        lab.up(1)
        ctr.define_network(lab, NETWORK, VNI, SUBNET)
        added = ctr.add_container(lab, "c0", "host0", NETWORK)
        if added.returncode != 0:
            log(f"[setup] ADD of c0 failed: {added.stdout} {added.stderr}")
            return 1
        h = lab.hosts[0]
        plan = {"etcd": lab.etcd_url, "rundir": h.ovs_dir, "host_netns": h.netns,
                "agent_pidfile": h.agent_pidfile, "agent_config": h.agent_config,
                "agent_log": h.agent_log, "agent_socket": h.socket, "sizes": args.sizes,
                "events": args.events, "idle": args.idle}
        cmd = ["ip", "netns", "exec", lab.underlay_ns, sys.executable, __file__, "--inside",
               json.dumps(plan)]
        return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    finally:
        if args.keep:
            log(f"[teardown] keeping the lab in {lab.workdir} (prefix {lab.prefix})")
        else:
            log("[teardown] removing the lab")
            lab.down()


# --- the measuring half (inside the underlay namespace) -------------------------------------

class Switch:
    """br-int of the lab host, seen through ovs-ofctl (its socket is a file: any netns works)."""

    def __init__(self, rundir: str) -> None:
        self.rundir = rundir
        self.target = f"unix:{rundir}/br-int.mgmt"
        self.env = {**os.environ, "OVS_RUNDIR": rundir}
        self.events: dict[tuple[str, str], float] = {}  # (ADDED|DELETED, mac) -> when seen
        self.cond = threading.Condition()
        self.monitor: subprocess.Popen[str] | None = None
        self.base = 0  # the network's rules in table 20 that are not remote endpoints

    def measure_base(self) -> None:
        """Before any simulated endpoint: c0's rule, the broadcast rule, the gateway's."""
        self.base = self.count(f"table={TABLE_FORWARD},reg0={VNI}")

    def count(self, match: str) -> int:
        out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", self.target,
                              match], capture_output=True, text=True, env=self.env).stdout
        return int(out.split("flow_count=")[1].split()[0]) if "flow_count=" in out else -1

    def remote_flows(self) -> int:
        return self.count(f"table={TABLE_FORWARD},reg0={VNI}") - self.base

    def start_monitor(self) -> None:
        self.monitor = subprocess.Popen(
            ["stdbuf", "-oL", "ovs-ofctl", "-O", "OpenFlow14", "monitor", self.target,
             f"watch:!initial,!actions,table={TABLE_FORWARD}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.monitor is not None and self.monitor.stdout is not None
        for line in self.monitor.stdout:
            now = time.monotonic()
            if "event=" not in line or "dl_dst=" not in line:
                continue
            kind = line.split("event=")[1].split()[0]
            mac = line.split("dl_dst=")[1].split(",")[0].split()[0]
            with self.cond:
                self.events[(kind, mac)] = now
                self.cond.notify_all()

    def wait_event(self, kind: str, mac: str, timeout: float = 20.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while (kind, mac) not in self.events:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.events.pop((kind, mac))

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.terminate()
            self.monitor.wait()
            self.monitor = None
        self.events.clear()


class Cluster:
    """Simulated hosts and endpoints, written as agents write them."""

    def __init__(self, store: Any) -> None:
        from overlay.store import records as r
        self.r = r
        self.store = store
        self.lease = store.client.lease(3600)  # revoked at the end: the hosts vanish together
        self.hosts: set[int] = set()
        self.count = 0

    @staticmethod
    def address(i: int) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address("10.128.0.0") + 100 + i

    @staticmethod
    def mac(i: int) -> str:
        return "0a:58:" + ":".join(f"{b:02x}" for b in Cluster.address(i).packed)

    def endpoint(self, i: int, host: int | None = None) -> tuple[str, str]:
        host = i // PER_HOST if host is None else host
        rec = self.r.EndpointRecord(
            network=NETWORK, container_id=f"sim-{i:06d}", ifname="eth0", host=f"sim{host:05d}",
            vni=VNI, ips=[f"{self.address(i)}/14"], mac=self.mac(i), port=f"ovlsim{i:06d}",
            netns=f"/var/run/netns/sim-{i}", mtu=1450)
        return rec.key, rec.to_json()

    def ensure_host(self, h: int) -> None:
        if h in self.hosts:
            return
        vtep = ipaddress.IPv4Address("172.31.100.1") + h  # on the lab's underlay, unanswered
        rec = self.r.HostRecord(f"sim{h:05d}", str(vtep), "system")
        self.store.client.put(self.r.host_key(rec.host), rec.to_json(), lease=self.lease)
        self.hosts.add(h)

    def put(self, i: int, host: int | None = None) -> None:
        key, value = self.endpoint(i, host)
        self.store.client.put(key, value)

    def delete(self, i: int) -> None:
        self.store.client.delete(self.endpoint(i)[0])

    def grow_to(self, size: int) -> tuple[int, float]:
        """Put endpoints count..size-1 (hosts first); returns (puts, time of the last put)."""
        for h in range(self.count // PER_HOST, (size - 1) // PER_HOST + 1):
            self.ensure_host(h)
        todo = range(self.count, size)
        done = [0]
        lock = threading.Lock()

        def put(i: int) -> None:
            self.put(i)
            with lock:
                done[0] += 1
                if done[0] % 5000 == 0:
                    log(f"    ... {done[0]}/{len(todo)} puts")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, todo))
        self.count = size
        return len(todo), time.monotonic()


def agent_pid(plan: dict[str, Any]) -> int:
    return int(Path(plan["agent_pidfile"]).read_text().strip())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def event_latencies(cluster: Cluster, switch: Switch, n: int) -> tuple[list[float], list[float]]:
    # A monitor of its own: OVS drops a flow monitor that falls behind a burst of updates.
    switch.start_monitor()
    time.sleep(0.5)  # the monitor has connected and sent its request
    try:
        return _event_latencies(cluster, switch, n)
    finally:
        switch.stop()


def _event_latencies(cluster: Cluster, switch: Switch, n: int) -> tuple[list[float], list[float]]:
    # New containers on hosts that are in the network already: the common event. (A host's
    # first container in a network also changes the network's tunnel and broadcast rules,
    # which grow with the hosts in it.)
    puts, dels = [], []
    base = cluster.count + 1000  # addresses above the cluster's
    hosts = max(1, cluster.count // PER_HOST)
    for k in range(n):
        i = base + k
        start = time.monotonic()
        cluster.put(i, host=k % hosts)
        seen = switch.wait_event("ADDED", cluster.mac(i))
        if seen is not None:
            puts.append((seen - start) * 1000)
        start = time.monotonic()
        cluster.delete(i)
        seen = switch.wait_event("DELETED", cluster.mac(i))
        if seen is not None:
            dels.append((seen - start) * 1000)
    return puts, dels


def etcd_bytes_per_minute(plan: dict[str, Any], seconds: float) -> float:
    ns = ["ip", "netns", "exec", plan["host_netns"]]
    rule = ["INPUT", "-p", "tcp", "--sport", plan["etcd"].rsplit(":", 1)[1]]
    subprocess.run([*ns, "iptables", "-w", "-I", *rule], check=True)
    try:
        subprocess.run([*ns, "iptables", "-w", "-Z", "INPUT"], check=True)
        time.sleep(seconds)
        out = subprocess.run([*ns, "iptables", "-w", "-nvxL", "INPUT"], capture_output=True,
                             text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if "spt:" in ln)
        return int(line.split()[1]) * 60 / seconds
    finally:
        subprocess.run([*ns, "iptables", "-w", "-D", *rule], check=False)


def restart_agent(plan: dict[str, Any], switch: Switch, remote: int) -> float | None:
    from overlay.lab import host as steps
    pid = agent_pid(plan)
    steps.stop_pidfile(plan["agent_pidfile"])  # SIGTERM; the old agent drains (up to 5 s)
    start = time.monotonic()                  # from here: a new process, as after a reboot
    # A slow restart is a figure to report, not a failure of the benchmark: wait long.
    steps.start_agent(plan["agent_config"], netns=plan["host_netns"], log=plan["agent_log"],
                      pidfile=plan["agent_pidfile"], socket=plan["agent_socket"], timeout=300)
    assert agent_pid(plan) != pid
    # Serving and verified: the new run says (in OVSDB) that it made sure the switch holds its
    # whole table, by installing it or by finding it there (a dump identical rule for rule:
    # overlay/dataplane/wholetable.py; the rules then keep the previous run's cookie), and the
    # switch itself holds every rule of the network. The agent serves only after that anyway.
    ids = ["ovs-vsctl", f"--db=unix:{plan['rundir']}/db.sock", "get", "bridge", "br-int"]

    def external_id(key: str) -> str:
        return subprocess.run([*ids, f"external_ids:{key}"], capture_output=True,
                              text=True).stdout.strip().strip('"')
    generation = external_id("overlay-flow-generation")
    done = wait_until(lambda: external_id("overlay-flow-verified") == generation and switch.count(
        f"table={TABLE_FORWARD},reg0={VNI}") == remote + switch.base, 120, 0.05)
    how = [line for line in Path(plan["agent_log"]).read_text().splitlines()
           if "adopted the switch's table" in line or "whole table of" in line][-1:]
    log(f"  restart: {how[0].split(': ', 1)[-1] if how else '?'}")
    return None if done is None else done - start


def restart_vswitchd(plan: dict[str, Any], switch: Switch, remote: int) -> float | None:
    """From a new ovs-vswitchd's start (the old one stopped) until its switch holds every
    rule of the network again: the agent noticed the restart and pushed its whole table."""
    from overlay.lab import host as steps
    steps.stop_pidfile(f"{plan['rundir']}/ovs-vswitchd.pid")
    start = time.monotonic()
    steps.start_vswitchd(plan["rundir"], plan["host_netns"])
    done = wait_until(lambda: switch.count(f"table={TABLE_FORWARD},reg0={VNI}")
                      == remote + switch.base, 120, 0.02)
    return None if done is None else done - start


def record_trouble(plan: dict[str, Any]) -> tuple[int, int]:
    """(records rejected, conflicts) the agent logged so far, all its runs: every one is
    logged once by overlay/agent/reconciler.py, and a run of well-formed records expects 0."""
    rejected = conflicts = 0
    for line in Path(plan["agent_log"]).read_text(errors="replace").splitlines():
        if "overlay.agent.reconciler" not in line:
            continue
        rejected += " record " in line and "ignoring " in line
        conflicts += "conflict in network" in line or " which network " in line
    return rejected, conflicts


def inside(plan: dict[str, Any]) -> int:
    from overlay.store.etcd import Store

    store = Store(endpoints=[plan["etcd"]], timeout=10.0)
    switch = Switch(plan["rundir"])
    switch.measure_base()
    cluster = Cluster(store)
    rows: list[dict[str, float]] = []
    try:
        for size in plan["sizes"]:
            log(f"[{size}] growing the network to {size} remote endpoints ...")
            puts, last = cluster.grow_to(size)
            done = wait_until(lambda n=size: switch.remote_flows() >= n, 600, 0.02)
            burst = float("nan") if done is None else done - last
            log(f"[{size}] {puts} puts absorbed {burst:.2f} s after the last put; "
                f"measuring {plan['events']} put and delete events ...")
            put_ms, del_ms = event_latencies(cluster, switch, plan["events"])
            pid = agent_pid(plan)
            row = {"size": size, "burst_puts": puts, "burst_s": burst,
                   "put_p50": percentile(put_ms, .5), "put_p99": percentile(put_ms, .99),
                   "del_p50": percentile(del_ms, .5), "del_p99": percentile(del_ms, .99),
                   "missed": 2 * plan["events"] - len(put_ms) - len(del_ms),
                   "rss_mb": rss_mb(pid), "cpu_s": cpu_seconds(pid)}
            log(f"[{size}] agent RSS {row['rss_mb']:.0f} MB, CPU {row['cpu_s']:.1f} s; idle for "
                f"{plan['idle']} s, counting bytes from etcd ...")
            row["idle_bytes_min"] = etcd_bytes_per_minute(plan, plan["idle"])
            log(f"[{size}] restarting the agent ...")
            restart = restart_agent(plan, switch, size)
            row["restart_s"] = float("nan") if restart is None else restart
            time.sleep(3)  # the restarted agent's janitor and first rounds
            row["rss_restart_mb"] = rss_mb(agent_pid(plan))
            log(f"[{size}] restarted agent RSS {row['rss_restart_mb']:.0f} MB; restarting "
                "ovs-vswitchd ...")
            vswitchd = restart_vswitchd(plan, switch, size)
            row["vswitchd_s"] = float("nan") if vswitchd is None else vswitchd
            row["rejected"], row["conflicts"] = record_trouble(plan)
            log(f"[{size}] records rejected {row['rejected']:.0f}, conflicts "
                f"{row['conflicts']:.0f} (expected 0)")
            rows.append(row)
            report(rows)
        log("[del --prefix] one DeleteRange of every simulated endpoint ...")
        start = time.monotonic()
        store.client.delete_prefix(f"/overlay/v1/endpoints/{NETWORK}/sim-")
        gone = wait_until(lambda: switch.remote_flows() == 0, 120, 0.02)
        log(f"  switch held none of them {'never' if gone is None else f'{gone - start:.2f} s'}"
            " after the DeleteRange")
    finally:
        switch.stop()
        try:
            cluster.lease.revoke()
            store.client.delete_prefix(f"/overlay/v1/endpoints/{NETWORK}/sim-")
        finally:
            store.close()
    return 0


COLUMNS = [("burst_s", "burst absorbed (s)", "{:.2f}"), ("put_p50", "put->switch p50 (ms)", "{:.1f}"),
           ("put_p99", "put->switch p99 (ms)", "{:.1f}"), ("del_p50", "del->switch p50 (ms)", "{:.1f}"),
           ("del_p99", "del->switch p99 (ms)", "{:.1f}"), ("rss_mb", "agent RSS (MB)", "{:.0f}"),
           ("cpu_s", "agent CPU total (s)", "{:.1f}"),
           ("idle_bytes_min", "idle etcd bytes/min", "{:.0f}"),
           ("restart_s", "restart->verified (s)", "{:.2f}"),
           ("rss_restart_mb", "RSS after restart (MB)", "{:.0f}"),
           ("vswitchd_s", "vswitchd restart (s)", "{:.2f}"),
           ("rejected", "records rejected", "{:.0f}"), ("conflicts", "record conflicts", "{:.0f}")]


def report(rows: list[dict[str, float]]) -> None:
    log("")
    log(f"{'remote endpoints':<24}" + "".join(f"{int(r['size']):>20,}" for r in rows))
    for key, title, fmt in COLUMNS:
        cells = []
        for i, r in enumerate(rows):
            cell = fmt.format(r[key])
            if i and rows[i - 1][key] and rows[i - 1][key] == rows[i - 1][key]:  # not NaN/0
                cell += f" ({r[key] / rows[i - 1][key]:.1f}x)"
            cells.append(f"{cell:>20}")
        log(f"{title:<24}" + "".join(cells))
    missed = sum(int(r["missed"]) for r in rows)
    log(f"(burst: puts of that step = {', '.join(str(int(r['burst_puts'])) for r in rows)}; "
        f"events never seen in the switch within 20 s: {missed})")
    log("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="leave the lab up (debugging)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(json.loads(args.inside))
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        log("bench/scale.py needs root (network namespaces, OVS)")
        return 1
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
