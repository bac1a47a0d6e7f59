"""The container's side of a trace: which of its routes a packet takes, and to which neighbour.

A container does not send a frame "to an address": it looks the address up in its routing
table, and sends to the MAC of the next hop. An address inside one of its own prefixes is on
the link, so the frame goes to that address's MAC; anything else goes to the MAC of the
route's gateway (for our containers, the default route via the network's distributed gateway,
whose MAC is 0e:6f:76 + VNI on every host); with no matching route the packet is never sent.
A trace that guessed a MAC for an off-network address described a packet no container sends.

Pure: the endpoint record's addresses (with prefix) and routes in, the chosen route out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NextHop:
    route: str   # the route as `ip route` would print it, e.g. "default via 10.0.0.1"
    ip: str      # the neighbour the frame is sent to: the destination, or the route's gateway
    routed: bool  # True: through a router (the gateway); False: on the link

    def as_dict(self) -> dict[str, object]:
        return {"route": self.route, "next_hop": self.ip, "routed": self.routed}


def _network(text: str) -> IpNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _describe(net: IpNetwork, gw: str) -> str:
    dst = "default" if net.prefixlen == 0 else str(net)
    return f"{dst} via {gw}" if gw else f"{dst} dev eth"


def pick(prefixes: Sequence[str], routes: Sequence[tuple[str, str]],
         dst: str) -> NextHop | None:
    """The route the kernel would pick for `dst`: the longest prefix that holds it, the
    on-link prefix of an address winning a tie. `prefixes`: the container's addresses with
    their prefix length ("10.0.0.2/24"); `routes`: (dst, gw) pairs from its endpoint record
    (gw "" for a device route). None: no route, the packet is never sent."""
    target = ipaddress.ip_address(dst)
    best: tuple[int, int, NextHop] | None = None
    candidates: list[tuple[IpNetwork | None, str, int]] = \
        [(_network(p), "", 1) for p in prefixes] + [(_network(d), gw, 0) for d, gw in routes]
    for net, gw, on_link in candidates:
        if net is None or net.version != target.version or target not in net:
            continue
        hop = NextHop(_describe(net, gw) if gw or not on_link else f"{net} (on the link)",
                      gw or dst, bool(gw))
        rank = (net.prefixlen, on_link)
        if best is None or rank > best[:2]:
            best = (*rank, hop)
    return best[2] if best else None
