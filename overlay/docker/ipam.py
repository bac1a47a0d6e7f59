"""IpamDriver.*: Docker's addresses from the cluster-wide etcd IPAM (overlay/ipam/).

libnetwork asks for a pool before the network exists and for addresses by pool, never naming
the network or the endpoint. So the pool's ID is its subnet, the network is found by it among
this daemon's ovs networks (networks.py), and the endpoint is known by the MAC that libnetwork
draws before it asks for the address (GetCapabilities: RequiresMACAddress) and hands to
CreateEndpoint with it. An address is held in etcd by owner `docker-<mac>/eth`, the same owner
as the endpoint record Join writes (driver.py), so `overlayctl doctor` sees one attachment.

The gateway is no allocation: it is the subnet's first address on every host, sent back with
the pool so that libnetwork does not ask for it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from overlay.cni.ports import Allocator
from overlay.docker import fields
from overlay.docker.networks import ADDRESS_SPACE, Networks
from overlay.docker.protocol import DockerError, Handler
from overlay.model import Address
from overlay.store.records import DOCKER_PREFIX, Holder, docker_owned, owner_of

GATEWAY = "com.docker.network.gateway"         # RequestPool's Data; RequestAddressType's value
MAC_OPTION = "com.docker.network.endpoint.macaddress"
IFNAME = "eth"                                  # the attachment's name in etcd and OVS


def container_id_for(mac: str) -> str:
    """The attachment's container ID in etcd and OVS: the endpoint's MAC, which both the
    IPAM request and CreateEndpoint carry."""
    return DOCKER_PREFIX + mac.replace(":", "")


class Holders(Protocol):
    def allocation(self, network: str, ip: Address) -> Holder | None: ...


class IpamDriver:
    def __init__(self, *, networks: Networks, allocator: Allocator, holders: Holders,
                 host: str, bridge: str) -> None:
        self._networks = networks
        self._allocator = allocator
        self._holders = holders
        self._host = host
        self._bridge = bridge

    def routes(self) -> dict[str, Handler]:
        return {
            "/IpamDriver.GetCapabilities": lambda _: {"RequiresMACAddress": True,
                                                     "RequiresRequestReplay": False},
            "/IpamDriver.GetDefaultAddressSpaces": lambda _: {
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE},
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": lambda _: {},
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    def request_pool(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("V6"):
            raise DockerError("IPv6 is not supported by the ovs IPAM driver")
        space = fields.text(request, "AddressSpace", required=False)
        if space not in ("", ADDRESS_SPACE):
            raise DockerError(f"address space {space!r} is not the ovs IPAM driver's "
                              f"({ADDRESS_SPACE!r})")
        if not fields.text(request, "Pool", required=False):
            raise DockerError("the ovs IPAM driver needs the network's subnet: give --subnet, "
                              "e.g. --subnet 10.0.0.0/24")
        subnet = fields.ipv4_network(request["Pool"], "--subnet")
        if fields.text(request, "SubPool", required=False):
            raise DockerError("--ip-range is not supported by the ovs IPAM driver: containers "
                              "get addresses from the whole subnet")
        if fields.mapping(request, "Options"):
            raise DockerError("--ipam-opt is not supported by the ovs IPAM driver")
        if subnet.num_addresses < 4:
            raise DockerError(f"--subnet {subnet} is too small: it needs a gateway and at "
                              "least one container address (/30 or larger)")
        gateway = f"{subnet.network_address + 1}/{subnet.prefixlen}"
        return {"PoolID": str(subnet), "Pool": str(subnet), "Data": {GATEWAY: gateway}}

    def request_address(self, request: dict[str, Any]) -> dict[str, Any]:
        subnet = fields.ipv4_network(fields.text(request, "PoolID"), "PoolID")
        options = fields.mapping(request, "Options")
        wanted = fields.text(request, "Address", required=False)
        requested = [fields.ipv4_interface(wanted, "--ip").ip] if wanted else []
        gateway = subnet.network_address + 1
        if options.get("RequestAddressType") == GATEWAY:
            if requested and requested[0] != gateway:
                raise DockerError(f"--gateway {requested[0]}: an ovs network's gateway is its "
                                  f"subnet's first address, {gateway}, on every host")
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
        if MAC_OPTION not in options:  # an address for no endpoint: --aux-address
            raise DockerError("the ovs IPAM driver gives addresses to endpoints of ovs networks "
                              "only (--aux-address is not supported)")
        if requested and requested[0] in (subnet.network_address, gateway,
                                          subnet.broadcast_address):
            raise DockerError(f"--ip {requested[0]} is the network, gateway or broadcast "
                              f"address of {subnet}, which no container gets")
        mac = fields.mac(options[MAC_OPTION], "the endpoint's MAC")
        net = self._networks.by_pool(subnet)
        owner = owner_of(container_id_for(mac), IFNAME)
        assigned = self._allocator.allocate(net.name, owner, net.netconf(self._bridge).ipam,
                                            requested)
        return {"Address": str(assigned[0].address), "Data": {}}

    def release_address(self, request: dict[str, Any]) -> dict[str, Any]:
        subnet = fields.ipv4_network(fields.text(request, "PoolID"), "PoolID")
        ip = fields.ipv4_interface(fields.text(request, "Address"), "Address").ip
        net = self._networks.by_pool(subnet)
        holder = self._holders.allocation(net.name, ipaddress.ip_address(ip))
        # Only an address that an endpoint of this host's Docker holds (not the gateway, never
        # allocated): Leave may have freed it already, and then it may belong to someone else.
        if holder is not None and holder.host == self._host and \
                docker_owned(holder.owner):
            self._allocator.release(net.name, holder.owner)
        return {}
