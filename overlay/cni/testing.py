"""In-memory stand-ins for the ports of the CNI service (ports.py), for unit tests.

Each fake keeps the state its port is about (records, ports, flows, allocations, gateway users,
links) so a test can look at what a verb left behind, and honours what the callers rely on:
deletes are idempotent, a host deletes only the endpoint records naming it. Any of their verbs
can be made to fail (`fail`), before doing anything or after doing its work (a step that fails
half-way, as an OVS port whose ofport never comes), so a test can walk a failure through every
step of ADD.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from overlay.cni.netconf import NetConf
from overlay.cni.ports import HostInfo
from overlay.cni.service import CniService
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError, Code
from overlay.gateway.spec import GatewaySpec
from overlay.ipam.allocator import Assigned
from overlay.ipam.pool import candidates
from overlay.model import Address, IpamConfig, Route
from overlay.netlink import veth
from overlay.ovs.ovsdb import PortInfo
from overlay.policy.labels import Labels
from overlay.store.records import EndpointRecord, Holder, NetworkRecord, encryption_differs


class Faulty:
    """fail("verb") makes the next calls of `verb` raise (`after`: once its work is done)."""

    def __init__(self) -> None:
        self._failing: dict[str, tuple[CniError, bool]] = {}
        self.calls: list[str] = []

    def fail(self, verb: str, error: CniError | None = None, *, after: bool = False) -> None:
        self._failing[verb] = (error or CniError(Code.INTERNAL, f"injected: {verb} failed"),
                               after)

    def heal(self) -> None:
        self._failing.clear()

    def _before(self, verb: str) -> None:
        self.calls.append(verb)
        err = self._failing.get(verb)
        if err is not None and not err[1]:
            raise err[0]

    def _after(self, verb: str) -> None:
        err = self._failing.get(verb)
        if err is not None and err[1]:
            raise err[0]


class FakeEndpoints(Faulty):
    """EndpointStore and NetworkStore: etcd's endpoint and network records."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[tuple[str, str, str], EndpointRecord] = {}
        self.networks: dict[str, NetworkRecord] = {}
        self.reachable = True

    def get_endpoint(self, network: str, container_id: str,
                     ifname: str) -> EndpointRecord | None:
        self._before("get_endpoint")
        return self.records.get((network, container_id, ifname))

    def put_endpoint(self, rec: EndpointRecord) -> None:
        self._before("put_endpoint")
        key = (rec.network, rec.container_id, rec.ifname)
        other = self.records.get(key)
        if other is not None and other.host != rec.host:
            raise CniError(Code.ALREADY_ATTACHED, f"container {rec.container_id} interface "
                           f"{rec.ifname} is already attached on host {other.host}")
        self.records[key] = rec
        self._after("put_endpoint")

    def delete_endpoint(self, network: str, container_id: str, ifname: str, *,
                        host: str) -> str | None:
        self._before("delete_endpoint")
        rec = self.records.get((network, container_id, ifname))
        if rec is None:
            return None
        if rec.host != host:
            return rec.host
        del self.records[(network, container_id, ifname)]
        return None

    def set_endpoint_labels(self, network: str, container_id: str, ifname: str,
                            labels: dict[str, str], *, host: str, netns: str) -> bool:
        self._before("set_endpoint_labels")
        rec = self.records.get((network, container_id, ifname))
        if rec is None or rec.host != host or rec.netns != netns:
            return False
        self.records[(network, container_id, ifname)] = replace(rec, labels=dict(labels))
        return True

    def endpoints(self, network: str) -> list[EndpointRecord]:
        return [r for r in self.records.values() if r.network == network or not network]

    def all_endpoints(self) -> list[EndpointRecord]:
        return self.endpoints("")

    def ping(self) -> None:
        if not self.reachable:
            raise CniError(Code.TRY_AGAIN_LATER, "etcd is not reachable")

    def ensure_network(self, rec: NetworkRecord) -> bool:
        self._before("ensure_network")
        have = self.networks.get(rec.name)
        if have is not None and have.vni != rec.vni:
            raise CniError(Code.NETWORK_CONFLICT, f"network {rec.name!r} has vxlanID {have.vni}")
        if have is not None and have.encrypted != rec.encrypted:
            raise CniError(Code.NETWORK_CONFLICT, encryption_differs(have, rec))
        self.networks[rec.name] = rec
        self._after("ensure_network")
        return have is None

    def drop_network_if_unused(self, rec: NetworkRecord) -> None:
        if not self.endpoints(rec.name) and self.networks.get(rec.name) == rec:
            del self.networks[rec.name]


class FakePorts(Faulty):
    """PortStore: the bridge's ports in OVSDB."""

    def __init__(self) -> None:
        super().__init__()
        self.ports_: dict[str, PortInfo] = {}
        self.bridge_of: dict[str, str] = {}
        self.next_ofport = 1
        self.is_connected = True
        # A number OVS gives instead of the one asked for (as when it cannot honour it).
        self.instead_of_request: int | None = None

    def request_ofport(self) -> int:
        self.next_ofport += 1
        return self.next_ofport - 1

    def ensure_port(self, bridge: str, name: str, *,
                    external_ids: dict[str, str] | None = None,
                    ofport_request: int | None = None, vswitchd_applied: bool = True) -> int:
        self._before("ensure_port")
        old = self.ports_.get(name)
        if ofport_request is not None:
            ofport = self.instead_of_request or ofport_request
        else:
            ofport = old.ofport if old else self.next_ofport
            self.next_ofport += old is None
        self.ports_[name] = PortInfo(name, ofport, dict(external_ids or {}))
        self.bridge_of[name] = bridge
        self._after("ensure_port")  # as an interface OVS could not attach: the row is there
        return ofport

    def delete_port(self, name: str) -> None:
        self._before("delete_port")
        self.ports_.pop(name, None)

    def ofport(self, name: str) -> int | None:
        port = self.ports_.get(name)
        return port.ofport if port else None

    def port_external_ids(self, name: str) -> dict[str, str]:
        port = self.ports_.get(name)
        return dict(port.external_ids) if port else {}

    def ports(self, bridge: str) -> list[PortInfo]:
        return [p for n, p in self.ports_.items() if self.bridge_of[n] == bridge]

    def connected(self) -> bool:
        return self.is_connected


class FakeFlows(Faulty):
    """Flows: the local endpoints in the intent model, and whether the switch has them."""

    def __init__(self) -> None:
        super().__init__()
        self.local: dict[str, LocalPort] = {}
        self.in_switch: dict[str, LocalPort] = {}
        self.removed: list[str] = []  # every key remove_endpoint was called for
        self.answers = True

    def install_endpoint(self, key: str, port: LocalPort,
                         labels: Labels | None = None) -> None:
        self._before("install_endpoint")
        self.local[key] = port
        self.in_switch[key] = port
        self._after("install_endpoint")

    def remove_endpoint(self, key: str) -> None:
        self._before("remove_endpoint")
        self.removed.append(key)
        self.local.pop(key, None)
        self.in_switch.pop(key, None)

    def local_keys(self) -> set[str]:
        return set(self.local)

    def switch_has(self, port: LocalPort) -> bool:
        return port in self.in_switch.values()

    def switch_answers(self) -> bool:
        return self.answers


class FakeAllocator(Faulty):
    """Allocator: addresses held by owner, the lowest free of each range set first."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.held: dict[str, dict[Address, Holder]] = {}

    def allocate(self, network: str, owner: str, ipam: IpamConfig,
                 requested: Sequence[Address] = ()) -> list[Assigned]:
        self._before("allocate")
        held = self.held.setdefault(network, {})
        out = []
        for rset in ipam.range_sets:
            rng = rset[0]
            ip = next(iter(candidates(rng, set(held), ipam.exclude)), None)
            if ip is None:
                raise CniError(Code.IPAM_EXHAUSTED, f"network {network!r} has no free address")
            held[ip] = Holder(owner, self.host)
            out.append(Assigned(ipaddress.ip_interface(f"{ip}/{rng.subnet.prefixlen}"),
                                rng.gateway))
        self._after("allocate")
        return out

    def release(self, network: str, owner: str) -> None:
        self._before("release")
        held = self.held.get(network, {})
        for ip in [ip for ip, h in held.items() if h.owner == owner and h.host == self.host]:
            del held[ip]

    def held_by(self, network: str, owner: str) -> list[Address]:
        return sorted((ip for ip, h in self.held.get(network, {}).items() if h.owner == owner),
                      key=lambda ip: (ip.version, int(ip)))

    def allocations(self, network: str) -> dict[Address, Holder]:
        return dict(self.held.get(network, {}))


class FakeGateways(Faulty):
    """Gateways: a network's gateway exists while an endpoint key uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, GatewaySpec] = {}
        self.broken: list[str] = []  # what problems() reports

    def acquire(self, key: str, spec: GatewaySpec) -> None:
        self._before("acquire")
        self.users[key] = spec
        self._after("acquire")

    def release(self, key: str) -> None:
        self._before("release")
        self.users.pop(key, None)

    def problems(self, spec: GatewaySpec) -> list[str]:
        return list(self.broken)

    def doctor(self) -> list[str]:
        return list(self.broken)


@dataclass
class FakeLink:
    link: veth.ContainerLink
    netns: str
    view: veth.LinkView


class FakeLinks(Faulty):
    """Links: veth pairs by their host end, with what their container end looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, FakeLink] = {}

    def create_container_link(self, *, container_id: str, netns: str, ifname: str, mtu: int,
                              addresses: Sequence[veth.Interface], routes: Sequence[Route],
                              mac: str | None = None,
                              host_end_ready: Callable[[], None] | None = None
                              ) -> veth.ContainerLink:
        self._before("create_container_link")
        host = veth.hostside_name(container_id, ifname)
        if host in self.links:
            raise CniError(Code.NETLINK_FAILURE, f"host interface {host} already exists")
        mac = mac or "0a:58:00:00:00:01"
        link = veth.ContainerLink(host, "0a:00:00:00:00:01", ifname, mac, 2)
        view = veth.LinkView(mac, mtu, tuple(str(a) for a in addresses), True,
                             frozenset((str(r.dst), str(r.gw or "")) for r in routes))
        self.links[host] = FakeLink(link, netns, view)
        if host_end_ready is not None:
            host_end_ready()
        self._after("create_container_link")
        return link

    def add_container_addresses(self, *, netns: str, ifname: str,
                                addresses: Sequence[veth.Interface],
                                routes: Sequence[Route]) -> None:
        raise NotImplementedError("delegated IPAM is not faked")

    def delete_host_link(self, host_ifname: str) -> bool:
        self._before("delete_host_link")
        return self.links.pop(host_ifname, None) is not None

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def inspect_container_link(self, netns: str, ifname: str) -> veth.LinkView | None:
        for found in self.links.values():
            if found.netns == netns and found.link.ifname == ifname:
                return found.view
        return None

    def change(self, host_ifname: str, **what: object) -> None:
        """Change the container end behind our back (CHECK's tests)."""
        found = self.links[host_ifname]
        found.view = replace(found.view, **what)  # type: ignore[arg-type]


class FakeNetworks(Faulty):
    """NetworkInterest and SubnetCheck: which networks ADD asked to follow; subnets pass."""

    def __init__(self) -> None:
        super().__init__()
        self.joined: set[str] = set()

    def join(self, network: str) -> None:
        self._before("join")
        self.joined.add(network)

    def check(self, conf: NetConf) -> None:
        self._before("check")


@dataclass
class FakeHost:
    """One host's CNI service on fakes, and the fakes, to look at what the verbs left."""

    info: HostInfo = field(default_factory=lambda: HostInfo("host1", "br-int", 1500, "192.0.2.1"))
    endpoints: FakeEndpoints = field(default_factory=FakeEndpoints)
    ports: FakePorts = field(default_factory=FakePorts)
    flows: FakeFlows = field(default_factory=FakeFlows)
    gateways: FakeGateways = field(default_factory=FakeGateways)
    links: FakeLinks = field(default_factory=FakeLinks)
    networks: FakeNetworks = field(default_factory=FakeNetworks)
    allocator: FakeAllocator = field(init=False)
    service: CniService = field(init=False)

    def __post_init__(self) -> None:
        self.allocator = FakeAllocator(self.info.name)
        self.service = CniService(
            host=self.info, endpoints=self.endpoints, network_records=self.endpoints,
            ports=self.ports, flows=self.flows, allocator=self.allocator,
            gateways=self.gateways, networks=self.networks, subnets=self.networks,
            links=self.links)

    def leftovers(self) -> dict[str, object]:
        """Everything an attachment may leave behind; all empty on a clean host."""
        return {"records": dict(self.endpoints.records), "networks": dict(self.endpoints.networks),
                "allocations": {n: h for n, h in self.allocator.held.items() if h},
                "ports": dict(self.ports.ports_), "flows": dict(self.flows.local),
                "gateway users": dict(self.gateways.users), "links": dict(self.links.links)}
