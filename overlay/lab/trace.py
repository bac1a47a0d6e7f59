"""`python -m overlay.lab trace A B`: overlayctl trace between lab containers, by lab name,
on every host the packet crosses.

It runs the real `overlayctl trace` inside the underlay namespace (where etcd answers), with
the source host's OVS_RUNDIR; when the verdict is "tunneled ... continue on host H", it runs
it again with `--arriving` and host H's OVS_RUNDIR: what an operator does by hand on two
machines.
"""

from __future__ import annotations

import json
import os
from typing import Any

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab

MAX_HOPS = 4  # a loop between hosts would be a bug worth seeing, not worth hanging on


def _overlayctl(lab: Lab, rundir: str, args: list[str]) -> dict[str, Any]:
    cmd = [os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(), "--json",
           "trace", *args, "--ovs-rundir", rundir]
    out = run(cmd, netns=lab.underlay_ns, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr.strip() or out.stdout.strip())
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def lab_trace(lab: Lab, src: str, dst: str, options: list[str]) -> dict[str, Any]:
    """The whole path: the overlayctl JSON of the first hop, with every later hop appended."""
    if src not in lab.containers:
        raise SystemExit(f"no container {src!r} in the lab ({', '.join(lab.containers)})")
    target = lab.containers[dst]["container_id"] if dst in lab.containers else dst
    c = lab.containers[src]
    args = [f"{c['network']}/{c['container_id']}/{c['ifname']}", target, *options]
    result = _overlayctl(lab, lab.host(c["host"]).ovs_dir, args)
    hops = result["hops"]
    while hops[-1]["continue_on"] and len(hops) < MAX_HOPS:
        nxt = lab.host(hops[-1]["continue_on"])
        hops += _overlayctl(lab, nxt.ovs_dir, [*args, "--arriving", "--host", nxt.name])["hops"]
    result["verdict"] = hops[-1]["summary"]
    return result


def render(result: dict[str, Any]) -> str:
    src, dst, pkt = result["source"], result["destination"], result["packet"]
    lines = [f"trace {src['container_id']} ({src['network']}, {src['host']}) -> "
             + (f"{dst['container_id']} ({dst['network']}, {dst['host']})" if dst
                else f"{pkt['dst_ip']} (no endpoint)"),
             f"  packet: {pkt['proto']} {pkt['src_mac']} {pkt['src_ip']} -> {pkt['dst_mac']} "
             f"{pkt['dst_ip']}"]
    for hop in result["hops"]:
        lines.append(f"  on {hop['host']}:")
        for s in hop["steps"]:
            lines.append(f"    {s['table']:>2} {s['table_name']:<9} {s['match'] or '(catch-all)'}")
            lines.append(f"       {'':<9} -> {', '.join(s['actions']) or '(no actions)'}")
        lines.append(f"    => {hop['summary']}")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
