"""`python -m overlay.lab trace A B`: overlayctl trace between lab containers, by lab name,
on every host the packet crosses.

It runs the real `overlayctl trace` inside the source host's namespace, with that host's
OVS_RUNDIR, as an operator would on the host: its switch says what OVS does, its routing table
and iptables rules say how a packet given to the gateway leaves the host. When the verdict is
"tunneled ... continue on host H", it runs it again in host H with `--arriving`: what an
operator does by hand on two machines.
"""

from __future__ import annotations

import json
import os
from typing import Any

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost

MAX_HOPS = 4  # a loop between hosts would be a bug worth seeing, not worth hanging on


def _overlayctl(lab: Lab, host: LabHost, args: list[str]) -> dict[str, Any]:
    tls = lab.overlayctl_etcd_args()[2:]  # the TLS flags; etcd as the host's agent reaches it
    cmd = [os.path.join(steps.scripts_dir(), "overlayctl"), "--etcd", ",".join(lab.etcd_urls),
           *tls, "trace", *args, "--ovs-rundir", host.ovs_dir, "--json"]
    out = run(cmd, netns=host.netns, check=False)
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
    result = _overlayctl(lab, lab.host(c["host"]), args)
    hops = result["hops"]
    while hops[-1]["continue_on"] and len(hops) < MAX_HOPS:
        nxt = lab.host(hops[-1]["continue_on"])
        hops += _overlayctl(lab, nxt, [*args, "--arriving", "--host", nxt.name])["hops"]
    result["verdict"], result["kind"] = hops[-1]["summary"], hops[-1]["kind"]
    result["leaves"] = hops[-1]["leaves"]
    return result


def render(result: dict[str, Any]) -> str:
    src, dst, pkt = result["source"], result["destination"], result["packet"]
    lines = [f"trace {src['container_id']} ({src['network']}, {src['host']}) -> "
             + (f"{dst['container_id']} ({dst['network']}, {dst['host']})" if dst
                else f"{pkt['dst_ip']} (no endpoint)"),
             f"  packet: {pkt['proto']} {pkt['src_mac']} {pkt['src_ip']} -> {pkt['dst_mac']} "
             f"{pkt['dst_ip']}"]
    if result.get("route"):
        lines.append(f"  route in the container: {result['route']['route']}")
    for hop in result["hops"]:
        lines.append(f"  on {hop['host']}:")
        for s in hop["steps"]:
            lines.append(f"    {s['table']:>2} {s['table_name']:<9} {s['match'] or '(catch-all)'}")
            lines.append(f"       {'':<9} -> {', '.join(s['actions']) or '(no actions)'}")
        lines.append(f"    => {hop['summary']}")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
