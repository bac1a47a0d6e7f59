"""A trace's verdict in words, with what the control plane says about the ends (pure).

The switch and the host kernel say what happens to the packet; only etcd knows who the ends
are, so why a packet was dropped ("spoofed source", "unknown destination", "other network")
and where a packet that reached the gateway was headed are said here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overlay.cli.trace import Cluster, Endpoint, Hop, Request


def _elsewhere(req: Request, cluster: Cluster) -> list[Endpoint]:
    """Endpoints of other networks that have the destination address."""
    if req.dst is not None and req.dst.network != req.src.network:
        return [req.dst]
    return [e for e in cluster.by_ip(req.dst_ip) if e.network != req.src.network]


def explain(hop: Hop, req: Request, cluster: Cluster, port_names: dict[int, str],
            arriving: bool) -> None:
    """Fill in hop.summary (and the verdict's reason for a drop or a refusal)."""
    v, pkt, src = hop.verdict, req.packet, req.src
    if v.kind in ("no-route", "no-neighbour"):
        v.reason = _not_sent(req)
        hop.summary = f"not sent: {v.reason}"
        return
    if v.kind == "gateway":
        _gateway(hop, req, cluster, port_names)
        return
    if v.kind == "arp-reply":
        owner = [e for e in cluster.by_mac(v.answer_mac) if e.vni == src.vni]
        who = f" ({owner[0].container_id} on {owner[0].host})" if owner else ""
        hop.summary = f"answered by ARP in OVS: {pkt.dst_ip} is at {v.answer_mac}{who}"
    elif v.kind == "tunneled":
        hop.continue_on = cluster.host_of_vtep(v.vtep)
        hop.summary = (f"tunneled to VTEP {v.vtep} with VNI {v.vni} (continue on host "
                       f"{hop.continue_on or '?'})")
        if v.vtep in cluster.sealed.values():  # docs/encryption.md
            hop.summary = (f"encrypted: tunneled with VNI {v.vni} to WireGuard address {v.vtep}"
                           f", sent inside WireGuard to host {hop.continue_on} (VTEP "
                           f"{cluster.vteps.get(hop.continue_on, '?')}); continue on that host")
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


def _not_sent(req: Request) -> str:
    src, route = req.src, req.route
    routes = ", ".join(f"{d} via {g}" if g else f"{d}" for d, g in src.routes) or "none"
    if route is None:
        return (f"no route in the container: {src.container_id} ({', '.join(src.prefixes)}) "
                f"has no route to {req.dst_ip} (its routes: {routes})")
    return (f"the container's next hop {route.ip} ({route.route}) does not answer ARP: no "
            f"endpoint of {src.network} has it and the switch answers nothing for it (is the "
            f"network's gateway missing on {src.host}?)")


def _gateway(hop: Hop, req: Request, cluster: Cluster, port_names: dict[int, str]) -> None:
    v, src = hop.verdict, req.src
    port = port_names.get(v.ports[0], str(v.ports[0])) if v.ports else "?"
    hop.summary = f"to the gateway of {src.network} (port {port})"
    other = _elsewhere(req, cluster)
    if other:
        e = other[0]
        hop.summary += (f", towards another network: {req.dst_ip} is {e.container_id} in "
                        f"{e.network} (VNI {e.vni})")
    if hop.egress is not None:
        if hop.egress.how == "refused":
            v.reason = hop.egress.why
        hop.summary += f"; {hop.egress.summary()}"


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
    elsewhere = _elsewhere(req, cluster)
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
