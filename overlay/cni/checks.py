"""CHECK: what ADD made and recorded against what the container, OVS, the flow table, the
gateway and the IP allocations hold now. Each difference is one sentence a person can act on;
a non-empty list is CNI error 106 (CHECK_FAILED).
"""

from __future__ import annotations

import ipaddress

from overlay.cni import delegate, leases, steps
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.ports import Allocator, EndpointStore, Flows, Gateways, HostInfo, Links, PortStore
from overlay.cni.steps import StripedLock
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError, Code
from overlay.gateway.spec import GatewaySpec
from overlay.model import endpoint_key
from overlay.store.records import EndpointRecord, owner_of


class Checker:
    def __init__(self, *, host: HostInfo, endpoints: EndpointStore, ports: PortStore,
                 flows: Flows, allocator: Allocator, gateways: Gateways, links: Links,
                 lock: StripedLock) -> None:
        self.host = host
        self.endpoints = endpoints
        self.ports = ports
        self.flows = flows
        self.allocator = allocator
        self.gateways = gateways
        self.links = links
        self.lock = lock

    def check(self, env: CniEnv, conf: NetConf) -> bytes:
        if not conf.at_least("0.4.0"):
            raise CniError(Code.INCOMPATIBLE_CNI_VERSION,
                           f"CHECK needs cniVersion 0.4.0 or later, the netconf says "
                           f"{conf.cni_version}")
        steps.check_bridge(conf, self.host)
        with self.lock(owner_of(env.container_id, env.ifname)):
            rec = self.endpoints.get_endpoint(conf.name, env.container_id, env.ifname)
            if rec is None:
                raise CniError(Code.UNKNOWN_CONTAINER,
                               f"container {env.container_id} interface {env.ifname} is not "
                               f"attached to {conf.name}")
            problems = differences(
                env, conf, rec, endpoint_key(conf.name, env.container_id, env.ifname),
                links=self.links, ports=self.ports, bridge=self.host.bridge, flows=self.flows,
                gateways=self.gateways, gateway=steps.gateway_spec(conf, self.host),
                allocator=self.allocator)
            if conf.ipam.delegated:
                delegate.run("CHECK", conf, env)
        if problems:
            raise CniError(Code.CHECK_FAILED,
                           f"container {env.container_id} interface {env.ifname} on "
                           f"{conf.name}: " + "; ".join(problems))
        return b""


def differences(env: CniEnv, conf: NetConf, rec: EndpointRecord, key: str, *, links: Links,
                ports: PortStore, bridge: str, flows: Flows, gateways: Gateways,
                gateway: GatewaySpec | None, allocator: Allocator) -> list[str]:
    """Every way the attachment `key` differs from what ADD made and recorded; [] if none.
    `gateway` is the network's gateway on this host, if it has one."""
    problems = []
    if rec.vni != conf.vni:
        problems.append(f"recorded vxlanID {rec.vni} differs from netconf {conf.vni}")
    problems += prev_result_differences(conf, env, rec)
    link = links.inspect_container_link(env.netns, env.ifname)
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
    ofport = ports.ofport(rec.port)
    if ofport is None:
        problems.append(f"OVS port {rec.port} is missing from {bridge}")
    else:
        port = LocalPort(rec.vni, rec.mac, tuple(rec.addresses), ofport,
                         rec.ipam == leases.DHCP)
        if key not in flows.local_keys() or not flows.switch_has(port):
            problems.append(f"the flows of port {rec.port} are not in the switch")
    if gateway is not None:
        problems += gateways.problems(gateway)
    if not conf.ipam.delegated:
        held = allocator.held_by(conf.name, owner_of(env.container_id, env.ifname))
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
