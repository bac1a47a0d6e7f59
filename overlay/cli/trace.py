"""`overlayctl trace`: why does a packet from container A to B (or an address) go where it goes?

It resolves both ends from etcd (network, VNI, host, MAC, addresses, routes, OVS port), builds
the packet the way the container would send it (its routes pick the next hop: on the link, the
destination's MAC; off the network, the MAC of its gateway, the network's distributed gateway
for the default route; no route, no packet: trace_route), asks the source host's ovs-vswitchd
with `ofproto/trace`, and prints the walk through our tables with one verdict. The switch, not
our model of it, decides: what is traced is what is installed.

A packet the switch hands to the network's gateway port is followed through the host kernel
(trace_egress): its routing table and iptables rules, read from the host, say whether it
leaves masqueraded (to which address), leaves with the container's address (ipMasq off), or
is refused, and by which rule or route.

It runs on the host whose switch it asks (ovs-appctl talks to a local unix socket; ip and
iptables read the namespace it runs in). A packet that leaves through the tunnel is traced
on, on the destination host, with `--arriving`: the same packet as it comes out of the tunnel
there (tun_id, tun_src), which the verdict's "continue on" line spells out.
`python -m overlay.lab trace A B` does both hops itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overlay.cli import trace_egress, trace_explain, trace_policy, trace_route
from overlay.cli import trace_walk as walk
from overlay.gateway.spec import PORT_PREFIX, gateway_mac
from overlay.model import mac_for
from overlay.policy.model import Policy, PolicyError
from overlay.store import records as r
from overlay.store.policies import POLICIES, decode_policy

PROTOCOLS = ("icmp", "tcp", "udp", "arp")


class TraceError(Exception):
    pass


@dataclass(frozen=True)
class Endpoint:
    network: str
    container_id: str
    ifname: str
    host: str
    vni: int
    mac: str
    ips: tuple[str, ...]
    port: str
    prefixes: tuple[str, ...] = ()              # the addresses with prefix: "10.0.0.2/24"
    routes: tuple[tuple[str, str], ...] = ()    # (dst, gw) as the endpoint record has them
    labels: tuple[tuple[str, str], ...] = ()    # what policies select it by

    @property
    def ip(self) -> str:
        return next((ip for ip in self.ips if ":" not in ip), self.ips[0] if self.ips else "")

    def describe(self) -> str:
        return f"{self.container_id} ({self.network}, VNI {self.vni}, {self.ip}, on {self.host})"


@dataclass
class Cluster:
    """What etcd says: endpoints, each host's VTEP, and for encrypted networks (docs/
    encryption.md) each host's WireGuard address, the tunnel's ends for them."""
    endpoints: list[Endpoint]
    vteps: dict[str, str]  # host -> vtep
    sealed: dict[str, str] = field(default_factory=dict)  # host -> WireGuard address
    encrypted: set[str] = field(default_factory=set)      # networks
    policies: list[Policy] = field(default_factory=list)  # the valid ones (trace_policy.py)

    @classmethod
    def from_state(cls, state: Mapping[str, bytes]) -> Cluster:
        eps, vteps, cluster = [], {}, cls([], {})
        for key, value in state.items():
            if key.startswith(r.ENDPOINTS):
                rec = r.EndpointRecord.from_json(value)
                routes = tuple((str(rt.get("dst", "")), str(rt.get("gw", "")))
                               for rt in rec.routes)
                eps.append(Endpoint(rec.network, rec.container_id, rec.ifname, rec.host, rec.vni,
                                    rec.mac, tuple(rec.addresses), rec.port, tuple(rec.ips),
                                    routes, tuple(sorted(rec.labels.items()))))
            elif key.startswith(POLICIES):
                with contextlib.suppress(PolicyError):  # as agents do: an invalid one is absent
                    cluster.policies.append(decode_policy(key, value))
            elif key.startswith(r.HOSTS):
                host = r.HostRecord.from_json(value)
                vteps[host.host] = host.vtep
                if host.wg_address:
                    cluster.sealed[host.host] = host.wg_address
            elif key.startswith(r.NETWORKS) and r.NetworkRecord.from_json(value).encrypted is True:
                cluster.encrypted.add(key[len(r.NETWORKS):])
        cluster.endpoints = sorted(eps, key=lambda e: (e.network, e.container_id, e.ifname))
        cluster.vteps = vteps
        return cluster

    def host_of_vtep(self, vtep: str) -> str:
        """The host of a VTEP, or of a WireGuard address (an encrypted network's tun_dst)."""
        return next((h for h, v in (*self.vteps.items(), *self.sealed.items()) if v == vtep), "")

    def find(self, name: str, network: str = "") -> Endpoint:
        """A container ID, or network/containerID[/ifname]."""
        parts = name.split("/")
        if len(parts) > 1:
            network, name = parts[0], parts[1]
        ifname = parts[2] if len(parts) > 2 else ""
        found = [e for e in self.endpoints if e.container_id == name
                 and (not network or e.network == network) and (not ifname or e.ifname == ifname)]
        if not found:
            raise TraceError(f"no endpoint {name!r} in etcd" + (f" on network {network}"
                                                                 if network else ""))
        if len(found) > 1:
            raise TraceError(f"{name} has {len(found)} attachments; say which: "
                             + ", ".join(f"{e.network}/{e.container_id}/{e.ifname}" for e in found))
        return found[0]

    def by_ip(self, ip: str) -> list[Endpoint]:
        return [e for e in self.endpoints if ip in e.ips]

    def by_mac(self, mac: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.mac == mac]


@dataclass(frozen=True)
class Packet:
    proto: str
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    sport: int = 0
    dport: int = 0

    def flow(self, in_port: str) -> str:
        """ofproto/trace's flow syntax for this packet entering at `in_port`."""
        if self.proto == "arp":
            return (f"{in_port},arp,dl_src={self.src_mac},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
                    f"arp_spa={self.src_ip},arp_tpa={self.dst_ip},arp_sha={self.src_mac}")
        v6 = ":" in self.dst_ip
        base = (f"{in_port},dl_src={self.src_mac},dl_dst={self.dst_mac},"
                + (f"ipv6_src={self.src_ip},ipv6_dst={self.dst_ip}" if v6
                   else f"nw_src={self.src_ip},nw_dst={self.dst_ip}"))
        if self.proto == "icmp":
            return f"{'icmp6' if v6 else 'icmp'},{base},icmp_type={128 if v6 else 8},icmp_code=0"
        # udp_src/udp_dst: ofproto/trace refuses tp_src for udp ("prerequisites not met").
        field = "udp" if self.proto == "udp" else "tp"
        return (f"{self.proto}{'6' if v6 else ''},{base},{field}_src={self.sport},"
                f"{field}_dst={self.dport}")

    def describe(self) -> str:
        if self.proto == "arp":
            return f"ARP who-has {self.dst_ip} tell {self.src_ip} ({self.src_mac})"
        ports = f" {self.sport} -> {self.dport}" if self.proto in ("tcp", "udp") else ""
        return (f"{self.proto}{ports}: {self.src_mac} {self.src_ip} -> "
                f"{self.dst_mac} {self.dst_ip}")


@dataclass
class Request:
    src: Endpoint
    dst_ip: str
    dst: Endpoint | None          # the endpoint the destination names, if any
    packet: Packet
    route: trace_route.NextHop | None = None   # the container's route (None for ARP)
    blocked: str = ""             # no-route | no-neighbour: the container never sends it

    @property
    def to_gateway(self) -> bool:
        return self.packet.dst_mac == gateway_mac(self.src.vni)


# The MAC of a next hop no endpoint has: the container ARPs for it, and the switch answers.
Neighbour = Callable[[Endpoint, str], str | None]


def next_hop_mac(cluster: Cluster, src: Endpoint, ip: str,
                 neighbour: Neighbour | None) -> str | None:
    """The MAC the container would learn for its next hop `ip`: an endpoint of its network
    (from etcd), else whatever answers its ARP (`neighbour`, the switch), else none."""
    same = [e.mac for e in cluster.by_ip(ip) if e.network == src.network]
    if same:
        return same[0]
    return neighbour(src, ip) if neighbour is not None else None


def build(cluster: Cluster, src: str, dst: str, *, proto: str = "icmp", sport: int = 0,
          dport: int = 0, network: str = "", src_ip: str = "", src_mac: str = "",
          neighbour: Neighbour | None = None) -> Request:
    """Resolve both ends and build the packet as the container would send it (see the
    module docstring); src_ip/src_mac forge the source (to see the anti-spoofing flows)."""
    if proto not in PROTOCOLS:
        raise TraceError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    s = cluster.find(src, network)
    try:
        dst_ip = str(ipaddress.ip_address(dst))
        same = [e for e in cluster.by_ip(dst_ip) if e.network == s.network]
        d = same[0] if same else None
    except ValueError:
        d = cluster.find(dst)
        dst_ip = d.ip
    if proto in ("tcp", "udp") and not dport:
        raise TraceError(f"{proto} needs --dport")
    route, blocked, dst_mac = None, "", "ff:ff:ff:ff:ff:ff"
    if proto != "arp":  # an ARP request is broadcast on the link, whatever the routes say
        route = trace_route.pick(s.prefixes, s.routes, dst_ip)
        if route is None:
            blocked, dst_mac = "no-route", ""
        elif not route.routed:  # on the link: the endpoint's MAC, or the MAC it would have
            # (the MAC rule: a fair stand-in for an on-link address no endpoint holds)
            dst_mac = (d.mac if d and d.network == s.network
                       else mac_for(ipaddress.ip_address(dst_ip)))
        else:
            dst_mac = next_hop_mac(cluster, s, route.ip, neighbour) or ""
            blocked = "" if dst_mac else "no-neighbour"
    packet = Packet(proto, src_mac or s.mac, dst_mac, src_ip or s.ip, dst_ip, sport or 40000,
                    dport)
    return Request(s, dst_ip, d, packet, route, blocked)


# --- asking the switch ----------------------------------------------------------------------


@dataclass(frozen=True)
class Switch:
    """One host's ovs-vswitchd, reached through the files in its OVS_RUNDIR."""
    rundir: str
    bridge: str = "br-int"
    tunnel_port: str = "vxlan0"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OVS_RUNDIR": self.rundir}

    def _run(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=self._env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TraceError(f"{cmd[0]} did not run: {exc}") from None
        if proc.returncode != 0:
            raise TraceError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()}")
        return proc.stdout

    def ports(self) -> dict[str, int]:
        """Port name -> ofport on the bridge."""
        out = self._run(["ovs-ofctl", "-O", "OpenFlow14", "show",
                         f"unix:{os.path.join(self.rundir, self.bridge + '.mgmt')}"])
        found = {}
        for line in out.splitlines():
            head = line.strip().split(":")[0]
            if "(" in head and head.endswith(")") and head.split("(")[0].isdigit():
                number, name = head[:-1].split("(", 1)
                found[name] = int(number)
        return found

    def trace(self, flow: str) -> str:
        ctl = os.path.join(self.rundir, "ovs-vswitchd.ctl")  # the lab names it; OVS's default
        target = ctl if os.path.exists(ctl) else "ovs-vswitchd"  # is found via OVS_RUNDIR
        return self._run(["ovs-appctl", "-t", target, "ofproto/trace", self.bridge, flow])


@dataclass
class Hop:
    host: str
    flow: str
    steps: list[walk.Step]
    verdict: walk.Verdict
    summary: str = ""
    continue_on: str = ""         # the host to go on tracing at, for a tunneled packet
    egress: trace_egress.Egress | None = None   # how a packet given to the gateway leaves the host

    @property
    def kind(self) -> str:
        """The verdict's kind, with the gateway's outcome: egress | refused | to-host."""
        if self.verdict.kind == "gateway" and self.egress is not None:
            return {"refused": "refused", "to-host": "to-host"}.get(self.egress.how, "egress")
        return self.verdict.kind

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "flow": self.flow, "summary": self.summary,
                "continue_on": self.continue_on, "kind": self.kind,
                "verdict": self.verdict.as_dict(),
                "leaves": self.egress.as_dict() if self.egress else None,
                "steps": [dict(s.__dict__, table_name=s.table_name) for s in self.steps]}


def switch_neighbour(switch: Switch) -> Neighbour:
    """Resolve a next hop as the container does: an ARP request from its port, answered (or
    not) by the switch's ARP table (the gateway's address is answered with its MAC)."""
    def resolve(src: Endpoint, ip: str) -> str | None:
        arp = Packet("arp", src.mac, "", src.ip, ip)
        steps = walk.parse_steps(switch.trace(arp.flow(f"in_port={src.port}")), switch.bridge)
        v = walk.verdict(steps, -1)
        return v.answer_mac if v.kind == "arp-reply" and v.answer_mac else None
    return resolve


def trace_hop(req: Request, cluster: Cluster, switch: Switch, *, arriving: bool = False,
              host: str = "", kernel: trace_egress.HostState | None = None) -> Hop:
    """Trace on one host: the source's (the packet leaves the container) or, with
    `arriving`, the destination's (the packet comes out of the tunnel from the source host).
    With `kernel` (this host's), a packet handed to the gateway is followed out of the host."""
    if req.blocked:  # the container never sends it: nothing for the switch to say
        hop = Hop(host or req.src.host, "", [], walk.Verdict(req.blocked))
        trace_explain.explain(hop, req, cluster, {}, arriving)
        return hop
    ports = switch.ports()
    tunnel = ports.get(switch.tunnel_port, -1)
    gateways = {number: name for name, number in ports.items() if name.startswith(PORT_PREFIX)}
    if arriving:
        src_vtep = cluster.vteps.get(req.src.host, "")
        if not src_vtep:
            raise TraceError(f"host {req.src.host} (of {req.src.container_id}) has no live "
                             "host record in etcd, so its VTEP is unknown")
        dst_vtep = cluster.vteps.get(host, "0.0.0.0")
        if req.src.network in cluster.encrypted:  # out of WireGuard: its addresses
            src_vtep = cluster.sealed.get(req.src.host, "0.0.0.0")
            dst_vtep = cluster.sealed.get(host, "0.0.0.0")
        in_port = (f"in_port={switch.tunnel_port},tun_id={req.src.vni},tun_src={src_vtep},"
                   f"tun_dst={dst_vtep}")
    else:
        if req.src.port not in ports:
            raise TraceError(f"port {req.src.port} of {req.src.container_id} is not on "
                             f"{switch.bridge} here; run the trace on {req.src.host}")
        in_port = f"in_port={req.src.port}"
        host = host or req.src.host
    flow = req.packet.flow(in_port)
    steps = walk.parse_steps(switch.trace(flow), switch.bridge)
    v = walk.verdict(steps, tunnel, gateways)
    hop = Hop(host, flow, steps, v)
    if v.kind == "gateway" and kernel is not None:
        pkt = req.packet
        try:
            hop.egress = trace_egress.follow(kernel, port=gateways[v.ports[0]], vni=req.src.vni,
                                       src=pkt.src_ip, dst=pkt.dst_ip, proto=pkt.proto,
                                       sport=pkt.sport, dport=pkt.dport)
        except RuntimeError as exc:
            raise TraceError(str(exc)) from None
    trace_explain.explain(hop, req, cluster, {number: name for name, number in ports.items()},
                          arriving)
    trace_policy.annotate(hop, req, cluster)
    return hop


@dataclass
class Trace:
    request: Request
    hops: list[Hop] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable verdict: the ends, the packet and the container's route, every
        hop's walk, and at the top the final `verdict` (words), `kind` and `leaves` (how a
        packet given to the gateway leaves the host, else null)."""
        req, last = self.request, (self.hops[-1] if self.hops else None)
        return {"source": req.src.__dict__, "destination": req.dst.__dict__ if req.dst else None,
                "packet": req.packet.__dict__,
                "route": req.route.as_dict() if req.route else None,
                "hops": [h.as_dict() for h in self.hops],
                "verdict": last.summary if last else "", "kind": last.kind if last else "",
                "leaves": last.egress.as_dict() if last and last.egress else None}

    def render(self) -> str:
        req = self.request
        dst = req.dst.describe() if req.dst else f"{req.dst_ip} (no endpoint)"
        lines = [f"trace {req.src.describe()} -> {dst}", f"  packet: {req.packet.describe()}"]
        if req.route is not None:
            lines.append(f"  route in the container: {req.route.route}")
        for hop in self.hops:
            lines.append(f"  on {hop.host or '?'}:")
            for s in hop.steps:
                lines.append(f"    {s.table:>2} {s.table_name:<9} {s.match or '(catch-all)'}"
                             f"  priority {s.priority}")
                lines.append(f"       {'' :<9} -> {', '.join(s.actions) or '(no actions)'}")
            lines.append(f"  verdict: {hop.summary}")
        return "\n".join(lines)
