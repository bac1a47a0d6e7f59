"""What the CNI verbs need from the rest of the agent, as narrow ports (typing.Protocol).

ADD, DEL, CHECK, STATUS and GC are written against these, never against the classes behind
them, so each verb says what it touches and the unit tests drive it with the fakes of
overlay/cni/testing.py. The agent wires the real pieces (agent/main.py): the etcd Store is the
endpoint and network store, Ovsdb the port store, the Dataplane the flows, EtcdIpam the
allocator, the GatewayManager the gateways and KernelLinks (below) the veth pairs.

Each port says what the callers rely on: the deletes are idempotent (DEL and every rollback
step may run when there is nothing left), and a failure is a CniError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from overlay.cni.netconf import NetConf
from overlay.dataplane.flows import LocalPort
from overlay.gateway.spec import GatewaySpec
from overlay.ipam.allocator import Assigned
from overlay.model import Address, IpamConfig, Route
from overlay.netlink import veth
from overlay.ovs import portschema
from overlay.ovs.ovsdb import PortInfo
from overlay.policy.labels import Labels
from overlay.store.records import EndpointRecord, Holder, NetworkRecord


@dataclass(frozen=True)
class HostInfo:
    name: str
    bridge: str
    underlay_mtu: int
    vtep: str = ""  # written into endpoint records (see EndpointRecord.vtep)
    # Why this host cannot carry an encrypted network ("" if it can: the kernel datapath and
    # WireGuard, overlay/agent/encryption.py), and the agent's default for netconfs that do not
    # say `encrypted` (its `encrypt_networks`).
    encryption_unavailable: str = "this agent does not configure WireGuard"
    encrypt_by_default: bool = False


class EndpointStore(Protocol):
    """Endpoint records in etcd. A host writes and deletes only the records naming it
    (store/ownership.py): put raises ALREADY_ATTACHED naming the other host."""

    def get_endpoint(self, network: str, container_id: str,
                     ifname: str) -> EndpointRecord | None: ...
    def put_endpoint(self, rec: EndpointRecord) -> None: ...
    def delete_endpoint(self, network: str, container_id: str, ifname: str, *,
                        host: str) -> str | None: ...
    def endpoints(self, network: str) -> list[EndpointRecord]: ...
    def all_endpoints(self) -> list[EndpointRecord]: ...
    def ping(self) -> None: ...


class NetworkStore(Protocol):
    """Network records (name, VNI, subnet) in etcd."""

    def ensure_network(self, rec: NetworkRecord) -> bool: ...  # True: this call created it
    def drop_network_if_unused(self, rec: NetworkRecord) -> None: ...


class PortStore(Protocol):
    """The containers' ports on the bridge, in OVSDB, with the external_ids of portschema."""

    def request_ofport(self) -> int: ...  # a free number, to ask for in ensure_port
    def ensure_port(self, bridge: str, name: str, *,
                    external_ids: dict[str, str] | None = None,
                    ofport_request: int | None = None,
                    vswitchd_applied: bool = True) -> int: ...  # its ofport
    def delete_port(self, name: str) -> None: ...
    def ofport(self, name: str) -> int | None: ...
    def port_external_ids(self, name: str) -> dict[str, str]: ...
    def ports(self, bridge: str) -> list[PortInfo]: ...
    def connected(self) -> bool: ...


class Flows(Protocol):
    """The local endpoints' flows (dataplane/): install and remove are idempotent."""

    def install_endpoint(self, key: str, port: LocalPort,
                         labels: Labels | None = None) -> None: ...
    def remove_endpoint(self, key: str) -> None: ...
    def local_keys(self) -> set[str]: ...
    def switch_has(self, port: LocalPort) -> bool: ...
    def switch_answers(self) -> bool: ...


class Allocator(Protocol):
    """The built-in IPAM: addresses held in etcd by owner (containerID/ifname)."""

    def allocate(self, network: str, owner: str, ipam: IpamConfig,
                 requested: Sequence[Address] = ()) -> list[Assigned]: ...
    def release(self, network: str, owner: str) -> None: ...
    def held_by(self, network: str, owner: str) -> list[Address]: ...
    def allocations(self, network: str) -> dict[Address, Holder]: ...


class Gateways(Protocol):
    """A network's gateway on this host, counted by the endpoints that use it."""

    def acquire(self, key: str, spec: GatewaySpec) -> None: ...
    def release(self, key: str) -> None: ...
    def problems(self, spec: GatewaySpec) -> list[str]: ...


class Links(Protocol):
    """The veth pair of an attachment (netlink/veth.py)."""

    def create_container_link(self, *, container_id: str, netns: str, ifname: str, mtu: int,
                              addresses: Sequence[veth.Interface], routes: Sequence[Route],
                              mac: str | None = None,
                              host_end_ready: Callable[[], None] | None = None
                              ) -> veth.ContainerLink: ...
    def add_container_addresses(self, *, netns: str, ifname: str,
                                addresses: Sequence[veth.Interface],
                                routes: Sequence[Route]) -> None: ...
    def delete_host_link(self, host_ifname: str) -> bool: ...
    def link_exists(self, name: str) -> bool: ...
    def inspect_container_link(self, netns: str, ifname: str) -> veth.LinkView | None: ...


class NetworkInterest(Protocol):
    """Following a network's endpoints in etcd (agent/networks.py)."""

    def join(self, network: str) -> None: ...


class SubnetCheck(Protocol):
    """Refuses a subnet that would break this host (cni/subnets.py)."""

    def check(self, conf: NetConf) -> None: ...


class KernelLinks:
    """Links on this host's kernel: the functions of netlink/veth.py."""

    def create_container_link(self, *, container_id: str, netns: str, ifname: str, mtu: int,
                              addresses: Sequence[veth.Interface], routes: Sequence[Route],
                              mac: str | None = None,
                              host_end_ready: Callable[[], None] | None = None
                              ) -> veth.ContainerLink:
        return veth.create_container_link(
            container_id=container_id, netns=netns, ifname=ifname, mtu=mtu,
            addresses=addresses, routes=routes, mac=mac, host_end_ready=host_end_ready)

    def add_container_addresses(self, *, netns: str, ifname: str,
                                addresses: Sequence[veth.Interface],
                                routes: Sequence[Route]) -> None:
        veth.add_container_addresses(netns=netns, ifname=ifname, addresses=addresses,
                                     routes=routes)

    def delete_host_link(self, host_ifname: str) -> bool:
        return veth.delete_host_link(host_ifname)

    def link_exists(self, name: str) -> bool:
        return veth.link_exists(name)

    def inspect_container_link(self, netns: str, ifname: str) -> veth.LinkView | None:
        return veth.inspect_container_link(netns, ifname)


@dataclass(frozen=True)
class EndpointPort:
    """A port on the bridge that names its attachment (GC, the janitor, the doctor)."""

    port: str
    network: str
    container_id: str
    ifname: str
    netns: str


def endpoint_ports(ports: PortStore, bridge: str) -> list[EndpointPort]:
    """Every endpoint port on the bridge, with the attachment its external_ids name."""
    out = []
    for port in ports.ports(bridge):
        owner = portschema.owner(port.external_ids)
        if owner is not None:
            out.append(EndpointPort(port.name, owner.network, owner.container_id,
                                    owner.ifname, owner.netns))
    return out
