"""The OpenFlow table of br-int, computed from desired state. Pure: same state, same flows.

Pipeline (one integration bridge, one flow-based VXLAN port):

  table 0  CLASSIFY   A container port is admitted only with its own MAC and its own IPv4/IPv6
                      addresses (anti-spoofing; IPv6 also link-local and DAD, which neighbour
                      discovery needs); its VNI goes to reg0. Tunnel traffic is admitted per
                      VNI from the VTEPs of hosts that have that network. The rest is dropped.
  table 10 ARP        ARP requests for any endpoint of the same network are answered right here
                      from control-plane data; nothing is flooded, across tunnels or locally.
                      IPv6 neighbour solicitations are multicast and go the broadcast way.
  table 20 FORWARD    Traffic from local containers: to a local port, or to the remote host's
                      VTEP with tun_id = VNI. Broadcast/multicast is replicated head-end to the
                      network's local ports and to the hosts that have the network, only.
  table 30 DELIVER    Traffic from the tunnel: to local ports of that VNI only (no hairpin).

Every lookup after table 0 matches reg0, so frames never cross between VNIs, even when the
networks' subnets overlap. Unknown unicast is dropped: the control plane knows every MAC.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

COOKIE_BASE = 0x0FE1A7 << 40  # "overlay" flows; the low 40 bits are the agent's generation


def cookie(generation: int) -> str:
    """Every flow carries the generation of the agent run that wrote it (see dataplane.py)."""
    return f"{COOKIE_BASE | (generation & 0xFFFFFFFFFF):#018x}"


COOKIE = cookie(0)
CLASSIFY, ARP, FORWARD, DELIVER = 0, 10, 20, 30
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"


@dataclass(frozen=True, order=True)
class LocalPort:
    vni: int
    mac: str
    ips: tuple[str, ...]
    ofport: int


@dataclass(frozen=True, order=True)
class RemoteEndpoint:
    vni: int
    mac: str
    ips: tuple[str, ...]
    vtep: str


@dataclass(frozen=True)
class DesiredState:
    tunnel_ofport: int
    local: tuple[LocalPort, ...] = ()
    remote: tuple[RemoteEndpoint, ...] = ()
    generation: int = 0


def _flow(table: int, priority: int, match: str, actions: str) -> str:
    head = f"cookie=@,table={table},priority={priority}"  # '@' becomes the cookie at the end
    return f"{head},{match},actions={actions}" if match else f"{head},actions={actions}"


def _arp_reply(mac: str, ip: str) -> str:
    # Turn the request around in place: swap Ethernet addresses, make it a reply, fill in the
    # answer, and send it back out of the port it came in on.
    return ",".join([
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]", f"mod_dl_src:{mac}",
        "load:0x2->NXM_OF_ARP_OP[]",
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]", "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
        f"set_field:{mac}->arp_sha", f"set_field:{ip}->arp_spa", "IN_PORT",
    ])


def _to_vtep(vtep: str, vni: int, tunnel_ofport: int) -> str:
    return f"set_field:{vtep}->tun_dst,set_field:{vni}->tun_id,output:{tunnel_ofport}"


def _v4(ips: tuple[str, ...]) -> list[str]:
    return [ip for ip in ips if ":" not in ip]


def _v6(ips: tuple[str, ...]) -> list[str]:
    return [ip for ip in ips if ":" in ip]


def _admit_local(p: LocalPort) -> list[str]:
    """Table 0 for one container port: only its own MAC, with its own addresses."""
    load = f"load:{p.vni}->NXM_NX_REG0[]"
    base = f"in_port={p.ofport},dl_src={p.mac}"
    flows = []
    for ip in _v4(p.ips):
        flows.append(_flow(CLASSIFY, 100, f"{base},ip,nw_src={ip}", f"{load},goto_table:{FORWARD}"))
        flows.append(_flow(CLASSIFY, 100, f"{base},arp,arp_spa={ip},arp_sha={p.mac}",
                           f"{load},goto_table:{ARP}"))
        # Its own address is never answered for it: duplicate-address probes must stay unanswered.
        flows.append(_flow(ARP, 110, f"in_port={p.ofport},arp,arp_tpa={ip}", "drop"))
    v6 = _v6(p.ips)
    for ip in v6:
        flows.append(_flow(CLASSIFY, 100, f"{base},ipv6,ipv6_src={ip}",
                           f"{load},goto_table:{FORWARD}"))
    if v6:
        # Link-local sources and the unspecified source of duplicate-address detection are part
        # of IPv6 neighbour discovery; neighbour solicitations travel as multicast in the network.
        flows.append(_flow(CLASSIFY, 100, f"{base},ipv6,ipv6_src=fe80::/10",
                           f"{load},goto_table:{FORWARD}"))
        flows.append(_flow(CLASSIFY, 100, f"{base},icmp6,ipv6_src=::,icmp_type=135",
                           f"{load},goto_table:{FORWARD}"))
    return flows


def compute_flows(state: DesiredState) -> list[str]:
    tun = state.tunnel_ofport
    local = sorted(set(state.local))
    local_by_vni: dict[int, list[LocalPort]] = defaultdict(list)
    for p in local:
        local_by_vni[p.vni].append(p)
    # A host only needs the remote endpoints of networks it has containers in.
    remote = sorted(e for e in set(state.remote) if e.vni in local_by_vni)
    vteps_by_vni: dict[int, set[str]] = defaultdict(set)
    for e in remote:
        vteps_by_vni[e.vni].add(e.vtep)

    flows = [_flow(CLASSIFY, 0, "", "drop"), _flow(ARP, 0, "", "drop"),
             _flow(FORWARD, 0, "", "drop"), _flow(DELIVER, 0, "", "drop")]
    for vni in sorted(local_by_vni):
        # Tunnel traffic is admitted per network and only from hosts that have that network.
        for vtep in sorted(vteps_by_vni[vni]):
            flows.append(_flow(CLASSIFY, 100, f"in_port={tun},tun_src={vtep},tun_id={vni}",
                               f"load:{vni}->NXM_NX_REG0[],goto_table:{DELIVER}"))
    for p in local:
        flows += _admit_local(p)
        flows += [
            _flow(FORWARD, 100, f"reg0={p.vni},dl_dst={p.mac}", f"output:{p.ofport}"),
            _flow(DELIVER, 100, f"reg0={p.vni},dl_dst={p.mac}", f"output:{p.ofport}"),
        ]
    for e in remote:
        flows.append(_flow(FORWARD, 100, f"reg0={e.vni},dl_dst={e.mac}",
                           _to_vtep(e.vtep, e.vni, tun)))
    answerable: list[LocalPort | RemoteEndpoint] = [*local, *remote]
    for ep in answerable:
        for ip in _v4(ep.ips):
            flows.append(_flow(ARP, 100, f"reg0={ep.vni},arp,arp_op=1,arp_tpa={ip}",
                               _arp_reply(ep.mac, ip)))
    for vni in sorted(local_by_vni):
        outputs = [f"output:{p.ofport}" for p in local_by_vni[vni]]
        floods = [_to_vtep(v, vni, tun) for v in sorted(vteps_by_vni[vni])]
        flows.append(_flow(FORWARD, 50, f"reg0={vni},dl_dst={MULTICAST}",
                           ",".join(outputs + floods)))
        flows.append(_flow(DELIVER, 50, f"reg0={vni},dl_dst={MULTICAST}", ",".join(outputs)))
    mark = f"cookie={cookie(state.generation)},"
    return [f.replace("cookie=@,", mark, 1) for f in flows]
