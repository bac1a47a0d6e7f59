"""Bringing a host's OVS into shape: integration bridge, tunnel port, and (netdev) br-phy.

    system datapath:  br-int (fail_mode=secure) + vxlan0; the kernel routes VXLAN packets.
    netdev datapath:  the same, plus br-phy holding the underlay NIC with the underlay IP on
                      br-phy's internal port, because userspace tunneling sends and receives
                      VXLAN through an OVS bridge, not through the kernel's stack.

There is exactly one VXLAN port, flow-based (remote_ip=flow, key=flow): the VTEP and VNI of
every packet are set by flows, so hosts and networks come and go without touching OVSDB.
Everything here is idempotent; the agent runs it at every start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass

from pyroute2 import IPRoute

from overlay.agent.config import AgentConfig
from overlay.errors import CniError, Code
from overlay.netlink import underlay
from overlay.ovs.ovsdb import Ovsdb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    datapath: str
    vtep: str
    underlay_mtu: int
    tunnel_ofport: int
    address: ipaddress.IPv4Interface  # the VTEP with its prefix, as found on the underlay


def detect_datapath(requested: str) -> str:
    if requested != "auto":
        return requested
    # The kernel datapath needs openvswitch.ko; without it only the userspace one works.
    return "system" if os.path.isdir("/sys/module/openvswitch") else "netdev"


def _mtu(ifname: str) -> int:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise CniError(Code.NETLINK_FAILURE, f"underlay interface {ifname} does not exist")
        return int(ipr.get_links(found[0])[0].get_attr("IFLA_MTU"))


def _underlay_address(cfg: AgentConfig, datapath: str) -> ipaddress.IPv4Interface:
    candidates = underlay.interface_addresses(cfg.underlay_interface)
    if datapath == "netdev" and not candidates:
        # A previous run already moved it onto br-phy.
        try:
            candidates = underlay.interface_addresses(cfg.underlay_bridge)
        except CniError:
            pass
    if cfg.underlay_ip:
        for c in candidates:
            if str(c.ip) == cfg.underlay_ip.split("/")[0]:
                return c
        if "/" in cfg.underlay_ip:
            return ipaddress.IPv4Interface(cfg.underlay_ip)
    if not candidates:
        raise CniError(Code.NETLINK_FAILURE,
                       f"no IPv4 address on {cfg.underlay_interface}; set underlay_ip")
    return candidates[0]


def prepare(cfg: AgentConfig, ovs: Ovsdb, known: Node | None = None) -> Node:
    """Idempotent. `known` is the result of an earlier run: after ovs-vswitchd restarted in
    netdev mode, br-phy's internal port (and the address on it) is gone and must come back."""
    datapath = known.datapath if known else detect_datapath(cfg.datapath)
    address = known.address if known else _underlay_address(cfg, datapath)
    mtu = _mtu(cfg.underlay_interface)
    if datapath == "netdev":
        ovs.ensure_bridge(cfg.underlay_bridge, datapath_type="netdev", secure=False)
        ovs.ensure_port(cfg.underlay_bridge, cfg.underlay_interface)
        underlay.move_address(address, cfg.underlay_interface, cfg.underlay_bridge)
    ovs.ensure_bridge(cfg.bridge, datapath_type="netdev" if datapath == "netdev" else "system",
                      secure=True)
    tunnel = ovs.ensure_port(cfg.bridge, cfg.tunnel_port, iface={
        "type": "vxlan", "options": {"remote_ip": "flow", "key": "flow"}})
    log.info("node ready: datapath=%s vtep=%s mtu=%d tunnel ofport=%d",
             datapath, address.ip, mtu, tunnel)
    return Node(datapath, str(address.ip), mtu, tunnel, address)
