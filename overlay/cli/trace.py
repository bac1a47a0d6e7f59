"""`overlayctl trace`: why does a packet from container A to B (or an address) go where it goes?

It resolves both ends from etcd (network, VNI, host, MAC, addresses, OVS port), builds the packet
a container would send (ICMP echo, TCP or UDP with ports, or an ARP request), asks the source
host's ovs-vswitchd with `ofproto/trace`, and prints the walk through our tables with one
verdict. The switch, not our model of it, decides: what is traced is what is installed.

It runs on the host whose switch it asks (ovs-appctl talks to a local unix socket). A packet
that leaves through the tunnel is traced on, on the destination host, with `--arriving`: the
same packet as it comes out of the tunnel there (tun_id, tun_src), which the verdict's
"continue on" line spells out. `python -m overlay.lab trace A B` does both hops itself.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overlay.cli import trace_walk as walk
from overlay.store import records as r

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

    @property
    def ip(self) -> str:
        return next((ip for ip in self.ips if ":" not in ip), self.ips[0] if self.ips else "")

    def describe(self) -> str:
        return f"{self.container_id} ({self.network}, VNI {self.vni}, {self.ip}, on {self.host})"


@dataclass
class Cluster:
    """What etcd says: endpoints, and each host's VTEP."""
    endpoints: list[Endpoint]
    vteps: dict[str, str]  # host -> vtep

    @classmethod
    def from_state(cls, state: Mapping[str, bytes]) -> Cluster:
        eps, vteps = [], {}
        for key, value in state.items():
            if key.startswith(r.ENDPOINTS):
                rec = r.EndpointRecord.from_json(value)
                eps.append(Endpoint(rec.network, rec.container_id, rec.ifname, rec.host, rec.vni,
                                    rec.mac, tuple(rec.addresses), rec.port))
            elif key.startswith(r.HOSTS):
                host = r.HostRecord.from_json(value)
                vteps[host.host] = host.vtep
        return cls(sorted(eps, key=lambda e: (e.network, e.container_id, e.ifname)), vteps)

    def host_of_vtep(self, vtep: str) -> str:
        return next((h for h, v in self.vteps.items() if v == vtep), "")

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
        return f"{self.proto}{'6' if v6 else ''},{base},tp_src={self.sport},tp_dst={self.dport}"

    def describe(self) -> str:
        if self.proto == "arp":
            return f"ARP who-has {self.dst_ip} tell {self.src_ip} ({self.src_mac})"
        ports = f" {self.sport} -> {self.dport}" if self.proto in ("tcp", "udp") else ""
        return (f"{self.proto}{ports}: {self.src_mac} {self.src_ip} -> "
                f"{self.dst_mac} {self.dst_ip}")


def guessed_mac(ip: str) -> str:
    """The MAC an address would have (overlay.cni.service.mac_for): a fair stand-in for an
    address no endpoint holds, which is what the trace is there to show."""
    packed = ipaddress.ip_address(ip).packed
    return "0a:58:" + ":".join(f"{b:02x}" for b in packed[-4:])


@dataclass
class Request:
    src: Endpoint
    dst_ip: str
    dst: Endpoint | None          # the endpoint the destination names, if any
    packet: Packet


def build(cluster: Cluster, src: str, dst: str, *, proto: str = "icmp", sport: int = 0,
          dport: int = 0, network: str = "", src_ip: str = "", src_mac: str = "") -> Request:
    """Resolve both ends and build the packet; src_ip/src_mac forge the source (to see the
    anti-spoofing flows at work)."""
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
    packet = Packet(proto, src_mac or s.mac, d.mac if d else guessed_mac(dst_ip),
                    src_ip or s.ip, dst_ip, sport or 40000, dport)
    return Request(s, dst_ip, d, packet)


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

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "flow": self.flow, "summary": self.summary,
                "continue_on": self.continue_on, "verdict": self.verdict.as_dict(),
                "steps": [dict(s.__dict__, table_name=s.table_name) for s in self.steps]}


def trace_hop(req: Request, cluster: Cluster, switch: Switch, *, arriving: bool = False,
              host: str = "") -> Hop:
    """Trace on one host: the source's (the packet leaves the container) or, with
    `arriving`, the destination's (the packet comes out of the tunnel from the source host)."""
    ports = switch.ports()
    tunnel = ports.get(switch.tunnel_port, -1)
    if arriving:
        src_vtep = cluster.vteps.get(req.src.host, "")
        if not src_vtep:
            raise TraceError(f"host {req.src.host} (of {req.src.container_id}) has no live "
                             "host record in etcd, so its VTEP is unknown")
        in_port = (f"in_port={switch.tunnel_port},tun_id={req.src.vni},tun_src={src_vtep},"
                   f"tun_dst={cluster.vteps.get(host, '0.0.0.0')}")
    else:
        if req.src.port not in ports:
            raise TraceError(f"port {req.src.port} of {req.src.container_id} is not on "
                             f"{switch.bridge} here; run the trace on {req.src.host}")
        in_port = f"in_port={req.src.port}"
        host = host or req.src.host
    flow = req.packet.flow(in_port)
    steps = walk.parse_steps(switch.trace(flow), switch.bridge)
    v = walk.verdict(steps, tunnel)
    hop = Hop(host, flow, steps, v)
    explain(hop, req, cluster, {number: name for name, number in ports.items()}, arriving)
    return hop


def explain(hop: Hop, req: Request, cluster: Cluster, port_names: dict[int, str],
            arriving: bool) -> None:
    """The verdict in words, with what etcd says about the ends."""
    v, pkt, src = hop.verdict, req.packet, req.src
    if v.kind == "arp-reply":
        owner = [e for e in cluster.by_mac(v.answer_mac) if e.vni == src.vni]
        who = f" ({owner[0].container_id} on {owner[0].host})" if owner else ""
        hop.summary = f"answered by ARP in OVS: {pkt.dst_ip} is at {v.answer_mac}{who}"
    elif v.kind == "tunneled":
        hop.continue_on = cluster.host_of_vtep(v.vtep)
        hop.summary = (f"tunneled to VTEP {v.vtep} with VNI {v.vni} (continue on host "
                       f"{hop.continue_on or '?'})")
    elif v.kind == "delivered":
        names = []
        for ofport in v.ports:
            name = port_names.get(ofport, str(ofport))
            owner = [e for e in cluster.endpoints if e.port == name and e.host == hop.host]
            names.append(f"port {name} (container {owner[0].container_id})" if owner
                         else f"port {name}")
        hop.summary = "delivered to " + ", ".join(names)
    else:
        v.reason = drop_reason(v.table, req, cluster, arriving)
        hop.summary = f"dropped at table {v.table} ({v.table_name}): {v.reason}"
        return
    if req.dst is not None and req.dst.network != src.network:  # same MAC/IP, other network
        v.reason = (f"{req.dst.container_id} is in {req.dst.network} (VNI {req.dst.vni}); this "
                    f"packet goes to whoever has {pkt.dst_mac} in {src.network} instead")
        hop.summary += f"; note: {v.reason}"


def drop_reason(table: int, req: Request, cluster: Cluster, arriving: bool) -> str:
    pkt, src = req.packet, req.src
    if table == 0:
        if arriving:
            return (f"this host admits no VNI {src.vni} traffic from {src.host}'s VTEP (it has "
                    f"no endpoint of {src.network}, or does not know {src.host} yet)")
        if pkt.src_mac != src.mac or pkt.src_ip not in src.ips:
            return (f"spoofed source: port {src.port} belongs to {src.container_id} with MAC "
                    f"{src.mac} and {', '.join(src.ips)}; the packet has {pkt.src_mac} "
                    f"{pkt.src_ip}")
        return f"port {src.port} admits nothing: its flows are missing (is the agent running?)"
    elsewhere = [e for e in cluster.by_ip(pkt.dst_ip) if e.network != src.network]
    if req.dst is not None and req.dst.network != src.network:
        elsewhere = [req.dst]
    if table == 10 and pkt.dst_ip in src.ips:
        return f"ARP for its own address {pkt.dst_ip} stays unanswered (duplicate address check)"
    if req.dst is None or req.dst.network != src.network:
        if elsewhere:
            e = elsewhere[0]
            return (f"other network: {pkt.dst_ip} is {e.container_id} in {e.network} (VNI "
                    f"{e.vni}), the source is in {src.network} (VNI {src.vni}); networks are "
                    "isolated")
        return f"unknown destination: no endpoint of {src.network} has {pkt.dst_ip}"
    if table == 30:
        return f"no port on this host has {pkt.dst_mac} in VNI {src.vni}"
    return (f"{req.dst.container_id} is known to etcd but this switch has no flow for it "
            f"(the agent has not programmed it: see overlayctl status / doctor)")


@dataclass
class Trace:
    request: Request
    hops: list[Hop] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        req = self.request
        return {"source": req.src.__dict__, "destination": req.dst.__dict__ if req.dst else None,
                "packet": req.packet.__dict__, "hops": [h.as_dict() for h in self.hops],
                "verdict": self.hops[-1].summary if self.hops else ""}

    def render(self) -> str:
        req = self.request
        dst = req.dst.describe() if req.dst else f"{req.dst_ip} (no endpoint)"
        lines = [f"trace {req.src.describe()} -> {dst}", f"  packet: {req.packet.describe()}"]
        for hop in self.hops:
            lines.append(f"  on {hop.host or '?'}:")
            for s in hop.steps:
                lines.append(f"    {s.table:>2} {s.table_name:<9} {s.match or '(catch-all)'}"
                             f"  priority {s.priority}")
                lines.append(f"       {'' :<9} -> {', '.join(s.actions) or '(no actions)'}")
            lines.append(f"  verdict: {hop.summary}")
        return "\n".join(lines)
