"""The OpenFlow rules of br-int, per object. Pure: same object, same flows.

Pipeline (one integration bridge, one flow-based VXLAN port):

  table 0  CLASSIFY   A container port is admitted only with its own MAC and its own IPv4/IPv6
                      addresses (anti-spoofing; IPv6 also its MAC's link-local address and DAD,
                      which neighbour discovery needs; a DHCP client also its DISCOVER/REQUEST
                      from 0.0.0.0, before it has an address); its VNI goes to reg0. Neighbour
                      discovery speaks only for itself (see _nd_flows), and DHCP server replies
                      come only from the network's named servers. Tunnel traffic is admitted per
                      VNI from the VTEPs of hosts that have that network. The rest is dropped.
  table 10 ARP        ARP requests for any endpoint of the same network are answered right here
                      from control-plane data; nothing is flooded, across tunnels or locally.
                      IPv6 neighbour solicitations are multicast and go the broadcast way.
  table 20 FORWARD    Traffic from local containers: to a local port, or to the remote host's
                      VTEP with tun_id = VNI. Broadcast/multicast is replicated head-end to the
                      network's local ports and to the hosts that have the network, only.
  table 30 DELIVER    Traffic from the tunnel: to local ports of that VNI only (no hairpin).
                      Traffic from the network's gateway port enters here too, so frames
                      from the gateway never cross a tunnel.

The gateway (see overlay/gateway/) is an internal port per network and host with the same IP
and MAC on every host: ARP for it is answered in table 10, frames to its MAC go to the local
gateway port (never to a tunnel), and what the host kernel sends back through it is delivered
to local ports only.

Every lookup after table 0 matches reg0, so frames never cross between VNIs, even when the
networks' subnets overlap. Unknown unicast is dropped: the control plane knows every MAC.

The rules are grouped by the object they exist for, because that is how they change: a local
port, a remote endpoint, a network on this host (its tunnel admission and broadcast rules), and
the fixed base. Each function returns `Flow`s, whose `identity` (table, priority, match) is what
OpenFlow itself uses to tell two rules apart: the incremental dataplane adds, modifies and
deletes by identity (flowtable.py), and `flowtable.compute_flows` builds the whole table from the same
functions for the recovery path and as the oracle the tests compare the increments with.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from overlay.model import ARP, CLASSIFY, DELIVER, FORWARD, INGRESS
from overlay.ovs.flow import (
    ARP as P_ARP,
)
from overlay.ovs.flow import (
    DROP,
    ICMP6,
    IP,
    IPV6,
    UDP,
    UDP6,
    Action,
    Actions,
    ArpReply,
    Flow,
    GotoTable,
    Identity,
    Load,
    Match,
    Output,
    Resubmit,
    SetField,
    match,
)

COOKIE_BASE = 0x0FE1A7 << 40  # "overlay" flows; the low 40 bits are the agent's generation


def cookie(generation: int) -> str:
    """Every flow carries the generation of the agent run that wrote it (see dataplane.py)."""
    return f"{COOKIE_BASE | (generation & 0xFFFFFFFFFF):#018x}"


COOKIE = cookie(0)
FLOOD = 40  # 40, 41, ...: the rest of a long broadcast replication list (see network_flows)
# VTEPs per broadcast rule. An OpenFlow message holds at most 64 KiB, and each VTEP costs 48
# bytes of actions (tun_dst, tun_id, output): 1,000 hosts in one network do not fit in one rule.
FLOOD_CHUNK = 500
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"

@dataclass(frozen=True, order=True, slots=True)
class LocalPort:
    vni: int
    mac: str
    ips: tuple[str, ...]
    ofport: int
    dhcp: bool = False  # its address comes from a DHCP server: admit the client's DISCOVER
    dhcp_server: bool = False  # the netconf names it in dhcpServers: it may answer DHCP clients


@dataclass(frozen=True, order=True, slots=True)
class RemoteEndpoint:
    vni: int
    mac: str
    ips: tuple[str, ...]
    vtep: str


@dataclass(frozen=True, order=True)
class Gateway:
    """A network's gateway port on this host: the same MAC and IPv4 address on every host."""

    vni: int
    mac: str
    ip: str
    ofport: int


@dataclass(frozen=True)
class DesiredState:
    """Everything the table is computed from, keyed as the dataplane keys its owners."""

    tunnel_ofport: int
    local: Mapping[str, LocalPort] = field(default_factory=dict)
    remote: Mapping[str, RemoteEndpoint] = field(default_factory=dict)
    generation: int = 0
    gateways: Mapping[int, Gateway] = field(default_factory=dict)


_new = tuple.__new__


def _flow(table: int, priority: int, m: Match, actions: Actions) -> Flow:
    return Flow(Identity(table, priority, m), actions)


def _load(vni: int, table: int) -> Actions:
    return (Load("reg0", vni), GotoTable(table))


@functools.lru_cache(maxsize=4096)
def _to_vtep(vtep: str, vni: int, tunnel_ofport: int) -> Actions:
    # One shared tuple: every endpoint of a host has these actions, and the flow table holds
    # the rules of every remote endpoint (50 per host in the benchmark). Remembered too:
    # building them was a tenth of computing a remote endpoint's rules.
    return (SetField("tun_dst", vtep), SetField("tun_id", vni), Output(tunnel_ofport))


def _v4(ips: tuple[str, ...]) -> list[str]:
    return [ip for ip in ips if ":" not in ip]


def _v6(ips: tuple[str, ...]) -> list[str]:
    return [ip for ip in ips if ":" in ip]


def _arp_answers(vni: int, mac: str, ips: tuple[str, ...]) -> list[Flow]:
    return [_flow(ARP, 100, match(reg0=vni, **P_ARP, arp_op=1, arp_tpa=ip), (ArpReply(mac, ip),))
            for ip in _v4(ips)]


def base_flows() -> list[Flow]:
    """What is not explicitly allowed is dropped, in every table."""
    return [_flow(table, 0, match(), DROP) for table in (CLASSIFY, ARP, FORWARD, DELIVER)]


def local_port_flows(p: LocalPort) -> list[Flow]:
    """Admission (only its own MAC, with its own addresses), delivery to it, ARP for it."""
    to_forward, to_arp = _load(p.vni, FORWARD), _load(p.vni, ARP)
    port, mac = p.ofport, p.mac
    flows = []
    for ip in _v4(p.ips):
        flows.append(_flow(CLASSIFY, 100, match(in_port=port, eth_src=mac, **IP, ipv4_src=ip),
                           to_forward))
        flows.append(_flow(CLASSIFY, 100, match(in_port=port, eth_src=mac, **P_ARP,
                                                arp_spa=ip, arp_sha=mac), to_arp))
        # Its own address is never answered for it: duplicate-address probes must stay unanswered.
        flows.append(_flow(ARP, 110, match(in_port=port, **P_ARP, arp_tpa=ip), DROP))
    if p.dhcp:
        # A DHCP client has no address until its lease, and falls back to none when a lease
        # cannot be renewed: it may broadcast client -> server UDP from 0.0.0.0, nothing else.
        # With an address, its renewals come from that address and pass the rule above.
        flows.append(_flow(CLASSIFY, 100, match(in_port=port, eth_src=mac, **UDP,
                                                ipv4_src="0.0.0.0", ipv4_dst="255.255.255.255",
                                                tp_src=68, tp_dst=67), to_forward))
    v6 = _v6(p.ips)
    sources = [*v6, link_local(p.mac)] if v6 else []
    for ip in sources:
        # Its own addresses and the link-local address the kernel derives from its MAC (EUI-64),
        # which neighbour discovery and router-less IPv6 use. Nothing else in fe80::/10.
        flows.append(_flow(CLASSIFY, 100, match(in_port=port, eth_src=mac, **IPV6, ipv6_src=ip),
                           to_forward))
    flows += _nd_flows(p, sources)
    flows += _dhcp_server_flows(p)
    flows += [
        _flow(FORWARD, 100, match(reg0=p.vni, eth_dst=mac), (Output(port),)),
        _flow(DELIVER, 100, match(reg0=p.vni, eth_dst=mac), (Output(port),)),
    ]
    return flows + _arp_answers(p.vni, p.mac, p.ips)


def link_local(mac: str) -> str:
    """The IPv6 link-local address Linux gives an interface with this MAC (modified EUI-64:
    ff:fe in the middle, the universal/local bit flipped)."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


# ICMPv6 types of neighbour discovery (RFC 4861) that speak for someone: router advertisement,
# neighbour solicitation and advertisement, redirect. Router solicitations only ask.
ND_RA, ND_NS, ND_NA, ND_REDIRECT = 134, 135, 136, 137
SOLICITED_NODE = "ff02::1:ff00:0/104"
NO_MAC = "00:00:00:00:00:00"  # how OVS shows an absent link-layer address option


def _nd_flows(p: LocalPort, sources: list[str]) -> list[Flow]:
    """Neighbour discovery that speaks only for this port (priority 120 admits, 110 drops).

    An NA (type 136) names a target address and, in its option, the MAC that has it: a forged
    one takes another container's traffic, as a forged ARP reply would. It passes only with one
    of the port's own addresses as target and its own MAC (or none). An NS carries the sender's
    MAC as its source link-layer option, which receivers store: its own or none. Duplicate
    address detection sends an NS from :: to the solicited-node multicast of the address being
    tested, which is one of its own. A container is no router: no RA (134), no redirect (137).
    """
    load = _load(p.vni, FORWARD)
    macs = (p.mac, NO_MAC)
    port, mac = p.ofport, p.mac
    flows = [_flow(CLASSIFY, 120, match(in_port=port, eth_src=mac, **ICMP6, ipv6_src=src,
                                        icmp_type=ND_NA, icmp_code=0, nd_target=target,
                                        nd_tll=tll), load)
             for src in sources for target in sources for tll in macs]
    flows += [_flow(CLASSIFY, 120, match(in_port=port, eth_src=mac, **ICMP6, ipv6_src=src,
                                         icmp_type=ND_NS, icmp_code=0, nd_sll=sll), load)
              for src in sources for sll in macs]
    flows += [_flow(CLASSIFY, 120, match(in_port=port, eth_src=mac, **ICMP6, ipv6_src="::",
                                         ipv6_dst=SOLICITED_NODE, icmp_type=ND_NS, icmp_code=0,
                                         nd_target=target), load)
              for target in sources]
    if sources:
        flows += [_flow(CLASSIFY, 110, match(in_port=port, **ICMP6, icmp_type=kind), DROP)
                  for kind in (ND_RA, ND_NS, ND_NA, ND_REDIRECT)]
    return flows


def _dhcp_server_flows(p: LocalPort) -> list[Flow]:
    """A port that is not one of its network's DHCP servers sends no server replies (a rogue
    OFFER would hand clients another router or DNS server). A named server needs no rule of
    its own: its replies come from its own addresses and pass the rules above."""
    if p.dhcp_server:
        return []
    replies = []
    if _v4(p.ips):  # server -> client
        replies.append(match(in_port=p.ofport, **UDP, tp_src=67, tp_dst=68))
    if _v6(p.ips):
        replies.append(match(in_port=p.ofport, **UDP6, tp_src=547, tp_dst=546))
    return [_flow(CLASSIFY, 110, m, DROP) for m in replies]


def remote_endpoint_flows(e: RemoteEndpoint, tunnel_ofport: int) -> list[Flow]:
    """Unicast to it goes to its host's VTEP; ARP for it is answered here.

    The rules _flow and _arp_answers would build, spelt out: a restarted
    agent computes them for every remote endpoint (50,000) before its table goes in.
    test_flows holds the two spellings to each other."""
    vni, mac = e.vni, e.mac
    # tuple.__new__ rather than the classes' own constructors: the same values, at half the
    # cost (this builds 100,000 rules while a restarted agent's switch waits).
    flows = [_new(Flow, (_new(Identity, (FORWARD, 100, "reg0", vni, "eth_dst", mac)),
                         _to_vtep(e.vtep, vni, tunnel_ofport)))]
    for ip in e.ips:
        if ":" not in ip:
            flows.append(_new(Flow, (_new(Identity, (ARP, 100, "reg0", vni, "eth_type", 0x0806,
                                                     "arp_op", 1, "arp_tpa", ip)),
                                     (ArpReply(mac, ip),))))
    return flows


@functools.lru_cache(maxsize=4096)
def _tunnel_admission(vtep: str, vni: int, tunnel_ofport: int) -> Flow:
    # Remembered: a network's rules are rebuilt whenever a host joins or leaves it, with one
    # of these per host (1,000 at 50,000 endpoints); the same values, and the same objects,
    # which the flow table then compares by identity.
    return _flow(CLASSIFY, 100, match(in_port=tunnel_ofport, tun_src=vtep, tun_id=vni),
                 _load(vni, DELIVER))


def network_flows(vni: int, ofports: Iterable[int], vteps: Iterable[str],
                  tunnel_ofport: int, policed: Collection[int] = ()) -> list[Flow]:
    """A network present on this host: tunnel admission from the hosts that have it, and
    head-end replication of broadcast to its local ports and those hosts.

    A port in `policed` (its ingress is policed: policy_flows.py) gets its copy through its
    ingress rules rather than straight: reg1 names it, and the rules judge the copy as they
    judge unicast to it. A resubmit is a call, so a copy the rules deny ends there and the
    replication goes on; each policed port costs two actions here, and nothing for the others."""
    ports, hosts = sorted(set(ofports)), sorted(set(vteps))
    flows = [_tunnel_admission(vtep, vni, tunnel_ofport) for vtep in hosts]
    outputs: list[Action] = [a for p in ports for a in
                             ((Load("reg1", p), Resubmit(INGRESS)) if p in policed else
                              (Output(p),))]
    floods = [_to_vtep(v, vni, tunnel_ofport) for v in hosts]
    # Long lists go on in tables 40, 41, ...: each rule replicates to FLOOD_CHUNK VTEPs and
    # resubmits to the next table, which comes back and carries on (resubmit is a call).
    chunks = [floods[i:i + FLOOD_CHUNK] for i in range(0, len(floods), FLOOD_CHUNK)] or [[]]
    for index, chunk in enumerate(chunks):
        actions = (list(outputs) if index == 0 else []) + [a for vtep in chunk for a in vtep]
        if index + 1 < len(chunks):
            actions.append(Resubmit(FLOOD + index))
        table, m = (FORWARD, match(reg0=vni, eth_dst=MULTICAST)) if index == 0 else \
            (FLOOD + index - 1, match(reg0=vni))
        flows.append(_flow(table, 50, m, tuple(actions)))
    flows.append(_flow(DELIVER, 50, match(reg0=vni, eth_dst=MULTICAST), tuple(outputs)))
    return flows


def gateway_flows(g: Gateway) -> list[Flow]:
    """The distributed gateway of one network on this host.

    ARP for the gateway address is answered here with the gateway MAC, which is the same on
    every host, so a container keeps its ARP entry when it moves. Frames to that MAC go to the
    local gateway port: priority 110, above any endpoint that might claim the MAC, so gateway
    traffic never takes a tunnel. What the host sends out of the port (replies to egress,
    host -> container, published ports) starts in DELIVER (local ports only); its ARP requests
    are answered from control-plane data like a container's.
    """
    return [
        _flow(CLASSIFY, 100, match(in_port=g.ofport, eth_src=g.mac, **IP), _load(g.vni, DELIVER)),
        _flow(CLASSIFY, 100, match(in_port=g.ofport, eth_src=g.mac, **P_ARP), _load(g.vni, ARP)),
        _flow(ARP, 110, match(reg0=g.vni, **P_ARP, arp_op=1, arp_tpa=g.ip),
              (ArpReply(g.mac, g.ip),)),
        _flow(FORWARD, 110, match(reg0=g.vni, eth_dst=g.mac), (Output(g.ofport),)),
    ]
