"""Moving the underlay address onto OVS's underlay bridge (userspace datapath only).

With the netdev datapath OVS encapsulates VXLAN itself and must own the path to other VTEPs:
the physical NIC becomes a port of br-phy, and the underlay IP moves from the NIC to br-phy's
internal interface, where OVS's router learns the route to the underlay subnet. Idempotent: if
the address already sits on the bridge, nothing changes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyroute2 import IPRoute

from overlay.cni.errors import CniError, Code


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
        if address in _addresses(ipr, nic_idx[0]):
            ipr.addr("del", index=nic_idx[0], address=str(address.ip),
                     prefixlen=address.network.prefixlen)
        if address not in _addresses(ipr, br_idx[0]):
            ipr.addr("add", index=br_idx[0], address=str(address.ip),
                     prefixlen=address.network.prefixlen)
