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
            dst = r.get_attr("RTA_DST")
            try:
                ipr.route("replace", dst=f"{dst}/{r['dst_len']}" if dst else "0.0.0.0/0",
                          gateway=r.get_attr("RTA_GATEWAY"), oif=br_idx[0])
            except NetlinkError as exc:
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
