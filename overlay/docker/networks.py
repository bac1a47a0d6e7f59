"""Docker networks of the ovs driver, as the overlay sees them: name, VNI, subnet.

What Docker may ask for and what the overlay can give differ, so CreateNetwork checks the
request (create_options) and refuses, with the reason, what this driver does not do: IPv6,
--internal, --ip-range, --aux-address, --ipam-opt, another IPAM driver, driver options other
than vxlanID. A network's name is the daemon's (daemon.py): `Networks` asks it once per
network and keeps the answer.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overlay.cni.netconf import NetConf, parse_netconf
from overlay.docker import fields
from overlay.docker.daemon import DaemonClient, DockerNetwork
from overlay.docker.protocol import DockerError
from overlay.model import VNI_MAX, VNI_MIN

ADDRESS_SPACE = "overlay"  # the IPAM driver's only address space: etcd's, cluster-wide
GENERIC = "com.docker.network.generic"  # where libnetwork puts `-o key=value`
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
DRIVER_OPTIONS = ("vxlanID",)


@dataclass(frozen=True)
class OvsNetwork:
    name: str
    vni: int
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The network's distributed gateway: the subnet's first address, on every host."""
        return self.subnet.network_address + 1

    def netconf(self, bridge: str, labels: Mapping[str, str] | None = None) -> NetConf:
        """The network as the CNI service takes it: Join and Leave are its ADD and DEL.
        `labels` go in as a CNI runtime's do, in args.cni.labels (cni/labels.py)."""
        args = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}} \
            if labels else {}
        return parse_netconf(json.dumps({
            "cniVersion": "1.0.0", "name": self.name, "type": "ovs", "bridge": bridge,
            "vxlanID": self.vni, "ipam": {"type": "overlay", "subnet": str(self.subnet)},
            **({"args": args} if args else {}),
        }).encode())


def vni_of(options: dict[str, Any], where: str) -> int:
    raw = options.get("vxlanID")
    if raw is None:
        raise DockerError(f"{where}: -o vxlanID=<{VNI_MIN}-{VNI_MAX}> is required: it names "
                          "the network on the wire, the same on every host")
    if not isinstance(raw, str | int) or not str(raw).isdigit() or \
            not VNI_MIN <= int(raw) <= VNI_MAX:
        raise DockerError(f"{where}: vxlanID must be a number from {VNI_MIN} to {VNI_MAX}, "
                          f"got {raw!r}")
    return int(raw)


def create_options(request: dict[str, Any]) -> tuple[int, ipaddress.IPv4Network]:
    """(VNI, subnet) of a CreateNetwork request, or the reason it cannot be served."""
    options = fields.mapping(request, "Options")
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise DockerError(f"Options.{GENERIC} must be a JSON object")
    unknown = sorted(k for k in generic if k not in DRIVER_OPTIONS)
    if unknown:
        raise DockerError(f"unsupported driver option(s) {', '.join(unknown)}: the ovs driver "
                          "takes only -o vxlanID=<VNI>")
    if options.get(ENABLE_IPV6) in (True, "true"):
        raise DockerError("--ipv6 is not supported by the ovs driver (IPv4 only)")
    if options.get(INTERNAL) in (True, "true"):
        raise DockerError("--internal is not supported by the ovs driver: every network has a "
                          "gateway on each host")
    if fields.items(request, "IPv6Data"):
        raise DockerError("IPv6 subnets are not supported by the ovs driver")
    data = fields.items(request, "IPv4Data")
    if len(data) != 1:
        raise DockerError("an ovs network has exactly one IPv4 subnet: give one --subnet")
    pool = data[0]
    if pool.get("AddressSpace") != ADDRESS_SPACE:
        raise DockerError("addresses of an ovs network come from the cluster-wide IPAM: create "
                          "it with --ipam-driver ovs")
    subnet = fields.ipv4_network(pool.get("Pool"), "the subnet")
    if pool.get("AuxAddresses"):
        raise DockerError("--aux-address is not supported by the ovs driver")
    return vni_of(generic, "docker network create"), subnet


def from_docker(net: DockerNetwork) -> OvsNetwork:
    if len(net.subnets) != 1:
        raise DockerError(f"Docker network {net.name} has {len(net.subnets)} subnets; an ovs "
                          "network has one")
    return OvsNetwork(net.name, vni_of(net.options, f"network {net.name}"),
                      fields.ipv4_network(net.subnets[0], f"network {net.name}'s subnet"))


class Networks:
    """This daemon's ovs networks, by ID and by pool (the IPAM driver only knows the pool)."""

    def __init__(self, daemon: DaemonClient, driver: str) -> None:
        self._daemon = daemon
        self._driver = driver
        self._lock = threading.Lock()
        self._by_id: dict[str, OvsNetwork] = {}

    def by_id(self, network_id: str) -> OvsNetwork:
        with self._lock:
            known = self._by_id.get(network_id)
        if known is not None:
            return known
        net = self._daemon.network(network_id)
        if net is None:
            raise DockerError(f"the Docker daemon does not know network {network_id}")
        found = from_docker(net)
        with self._lock:
            self._by_id[network_id] = found
        return found

    def by_pool(self, subnet: ipaddress.IPv4Network) -> OvsNetwork:
        """The network of this daemon whose subnet is `subnet` (CreateNetwork refuses a second
        one, so there is at most one)."""
        mine = [n for n in self.ours() if n.subnets == (str(subnet),)]
        if not mine:
            raise DockerError(f"no network of driver {self._driver} on this Docker host has "
                              f"subnet {subnet}: the ovs IPAM driver serves ovs networks only")
        return self.by_id(mine[0].id)

    def ours(self) -> list[DockerNetwork]:
        """This daemon's networks of this driver and its IPAM."""
        return [n for n in self._daemon.networks(self._driver)
                if n.driver == self._driver and n.ipam_driver == self._driver]

    def forget(self, network_id: str) -> OvsNetwork | None:
        with self._lock:
            return self._by_id.pop(network_id, None)
