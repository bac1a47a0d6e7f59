"""CHECK's comparison: what ADD made and recorded against what the container, OVS, the flow
table, the gateway and the IP allocations hold now. Each difference is one sentence a person can
act on; CniService.check turns a non-empty list into CNI error 106 (CHECK_FAILED).
"""

from __future__ import annotations

import ipaddress

from overlay.cni import leases
from overlay.cni.netconf import CniEnv, NetConf
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort
from overlay.gateway.manager import GatewayManager
from overlay.gateway.spec import GatewaySpec
from overlay.ipam.allocator import EtcdIpam
from overlay.netlink import veth
from overlay.ovs.ovsdb import Ovsdb
from overlay.store.records import EndpointRecord, owner_of


def differences(env: CniEnv, conf: NetConf, rec: EndpointRecord, key: str, *, ovs: Ovsdb,
                bridge: str, dataplane: Dataplane, gateways: GatewayManager,
                gateway: GatewaySpec | None, ipam: EtcdIpam) -> list[str]:
    """Every way the attachment `key` differs from what ADD made and recorded; [] if none.
    `gateway` is the network's gateway on this host, if it has one.

    Given the pieces it reads, not the service (which calls it): no import circle."""
    problems = []
    if rec.vni != conf.vni:
        problems.append(f"recorded vxlanID {rec.vni} differs from netconf {conf.vni}")
    problems += prev_result_differences(conf, env, rec)
    link = veth.inspect_container_link(env.netns, env.ifname)
    if link is None:
        problems.append(f"interface {env.ifname} is missing from {env.netns}")
    else:
        if link.mac != rec.mac:
            problems.append(f"MAC is {link.mac}, expected {rec.mac}")
        for ip in rec.ips:
            if str(ipaddress.ip_interface(ip)) not in link.addresses:
                problems.append(f"address {ip} is missing (has {', '.join(link.addresses)})")
        if rec.mtu and link.mtu != rec.mtu:
            problems.append(f"MTU is {link.mtu}, expected {rec.mtu}")
        for route in rec.routes:
            if (route["dst"], route["gw"]) not in link.routes:
                problems.append(f"route to {route['dst']} via {route['gw'] or 'link'} "
                                "is missing")
        if not link.up:
            problems.append("interface is down")
    ofport = ovs.ofport(rec.port)
    if ofport is None:
        problems.append(f"OVS port {rec.port} is missing from {bridge}")
    else:
        port = LocalPort(rec.vni, rec.mac, tuple(rec.addresses), ofport,
                         rec.ipam == leases.DHCP)
        if key not in dataplane.local_keys() or not dataplane.switch_has(port):
            problems.append(f"the flows of port {rec.port} are not in the switch")
    if gateway is not None:
        problems += gateways.problems(gateway)
    if not conf.ipam.delegated:
        held = ipam.held_by(conf.name, owner_of(env.container_id, env.ifname))
        for ip in rec.addresses:
            if ipaddress.ip_address(ip) not in held:
                problems.append(f"the IP allocation of {ip} is not held by this container")
    return problems


def prev_result_differences(conf: NetConf, env: CniEnv, rec: EndpointRecord) -> list[str]:
    """Addresses the runtime's prevResult gives our interface must be the ones we recorded."""
    prev = conf.prev_result
    if not prev:
        return []
    interfaces = prev.get("interfaces") or []
    ours = {i for i, itf in enumerate(interfaces)
            if isinstance(itf, dict) and itf.get("name") == env.ifname
            and itf.get("sandbox") == env.netns}
    problems = []
    for ip in prev.get("ips") or []:
        if isinstance(ip, dict) and ip.get("interface") in ours and ip.get("address") not in rec.ips:
            problems.append(f"prevResult lists {ip.get('address')} on {env.ifname}, which ADD "
                            "did not assign")
    return problems
