"""Moving the underlay address onto OVS's underlay bridge (userspace datapath only).

With the netdev datapath OVS encapsulates VXLAN itself and must own the path to other VTEPs:
the physical NIC becomes a port of br-phy, and the underlay IP moves from the NIC to br-phy's
internal interface, where OVS's router learns the route to the underlay subnet. Idempotent: if
the address already sits on the bridge, nothing changes.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlay.errors import CniError, Code

EEXIST = 17


def _addresses(ipr: Any, index: int) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=index, family=2)]


def interface_addresses(ifname: str) -> list[ipaddress.IPv4Interface]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise CniError(Code.NETLINK_FAILURE, f"underlay interface {ifname} does not exist")
        return _addresses(ipr, found[0])


def move_address(address: ipaddress.IPv4Interface, nic: str, bridge: str) -> None:
    with IPRoute() as ipr:
        nic_idx = ipr.link_lookup(ifname=nic)
        br_idx = ipr.link_lookup(ifname=bridge)
        if not nic_idx or not br_idx:
            raise CniError(Code.NETLINK_FAILURE, f"cannot move {address}: {nic} or {bridge} missing")
        ipr.link("set", index=nic_idx[0], state="up")
        ipr.link("set", index=br_idx[0], state="up")
        # Add before delete, and carry the NIC's gateway routes (the default route, say) over:
        # at no point may the host lose its address or its way out.
        if address not in _addresses(ipr, br_idx[0]):
            ipr.addr("add", index=br_idx[0], address=str(address.ip),
                     prefixlen=address.network.prefixlen)
        routes = [r for r in ipr.get_routes(family=2, oif=nic_idx[0], table=254)
                  if r.get_attr("RTA_GATEWAY")]
        if address in _addresses(ipr, nic_idx[0]):
            ipr.addr("del", index=nic_idx[0], address=str(address.ip),
                     prefixlen=address.network.prefixlen)
        for r in routes:
            _carry_route(ipr, r, nic_idx[0], br_idx[0], bridge)


def _carry_route(ipr: Any, route: Any, nic: int, bridge_index: int, bridge: str) -> None:
    """Put the host's route `route` (read from the NIC) back through the bridge, as it was:
    its protocol and metric are the operator's, not ours. The kernel usually dropped it with
    the NIC's last address; if it is still on the NIC it is moved (replaced), and a route with
    that destination and metric elsewhere is someone else's and stays (overlay/gateway/kernel.py:
    the agent never replaces a route it did not create)."""
    dst = route.get_attr("RTA_DST")
    prefix = f"{dst}/{route['dst_len']}" if dst else "0.0.0.0/0"
    metric = route.get_attr("RTA_PRIORITY") or 0
    still_on_nic = any((r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_PRIORITY") or 0)
                       == (dst, route["dst_len"], metric)
                       for r in ipr.get_routes(family=2, oif=nic, table=254))
    try:
        ipr.route("replace" if still_on_nic else "add", dst=prefix,
                  gateway=route.get_attr("RTA_GATEWAY"), oif=bridge_index, table=254,
                  priority=metric, proto=route["proto"])
    except NetlinkError as exc:
        if exc.code == EEXIST:
            return  # one is there (a previous run's, or the operator's): it stays
        raise CniError(Code.NETLINK_FAILURE, f"cannot move a route to {bridge}",
                       str(exc)) from None


PRIME_AGAIN_AFTER = (0.3, 1.0, 2.5)  # seconds; ARP on a busy host can miss the first time


def prime_neighbors_soon(vteps: Iterable[str]) -> None:
    """prime_neighbors now and a few times over the next seconds, without waiting for it.

    On a thread from the first round on: the reconciler calls this under its lock, and a
    restarted agent that learns 1,000 hosts at once spent 9 s there (a datagram to each new
    VTEP, each making the kernel create a neighbour entry and send an ARP request), holding up
    the 50,000 endpoints waiting for the same lock."""
    targets = list(vteps)

    def rounds() -> None:
        prime_neighbors(targets)
        for delay in PRIME_AGAIN_AFTER:
            time.sleep(delay)
            prime_neighbors(targets)
    threading.Thread(target=rounds, name="prime-neighbors", daemon=True).start()


def prime_neighbors(vteps: Iterable[str]) -> None:
    """Make the kernel resolve each VTEP's MAC now, so OVS learns it before the first packet.

    OVS's userspace tunneling looks up the next hop of a VTEP in its own neighbor table, which
    it fills by snooping ARP replies on br-phy. Until an entry exists, the packet that needed
    it is dropped (the first ping to a new host would be lost). One empty UDP datagram to the
    discard port makes the kernel ARP for the VTEP through br-phy, and OVS snoops the reply.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for vtep in vteps:
            try:
                sock.sendto(b"", (vtep, 9))
            except OSError:
                pass  # unreachable now; the next resync tries again
