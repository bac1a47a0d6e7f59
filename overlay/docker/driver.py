"""NetworkDriver.*: a Docker network is an overlay network; Join and Leave are CNI ADD and DEL.

Join runs the CNI service's own ADD steps (cni/attach.py, through an Attacher whose links are
DockerLinks): the same address (held since RequestAddress, ipam.py), veth host end, OVS port,
endpoint record, flows and gateway as a CNI container gets; the container's labels follow
(labels.py). Leave and DeleteEndpoint run DEL's (cni/detach.py). Nothing here writes etcd,
OVSDB or flows by itself.

The network's name is the daemon's (libnetwork passes only an ID), and the network exists
there only once CreateNetwork has returned. So CreateNetwork checks what it can at once (the
options; a VNI that etcd gives to another subnet; a second network of this host with the same
VNI or subnet), and records the network in etcd from a thread that asks the daemon for its
name. A name that etcd has with another VNI or subnet is found there: the network's endpoints
are then refused with that difference (CreateEndpoint), and the agent logs it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from overlay.cni.attach import Attacher
from overlay.cni.detach import Detacher
from overlay.cni.netconf import CniEnv
from overlay.cni.ports import NetworkStore
from overlay.docker import fields
from overlay.docker.endpoints import Endpoint, EndpointFiles
from overlay.docker.ipam import IFNAME, container_id_for
from overlay.docker.labels import Attachment, ContainerLabels
from overlay.docker.links import container_side_name
from overlay.docker.networks import Networks, create_options
from overlay.docker.protocol import DockerError, Handler
from overlay.docker.publish import Publisher
from overlay.errors import CniError
from overlay.store import records
from overlay.store.records import NetworkRecord, owner_of

log = logging.getLogger(__name__)

NAME_WAIT = 60.0  # seconds CreateNetwork's thread waits for the daemon to list the network


class Snapshots(Protocol):
    def snapshot(self, prefix: str) -> tuple[int, dict[str, bytes]]: ...


class NetworkDriver:
    def __init__(self, *, networks: Networks, etcd: Snapshots, network_records: NetworkStore,
                 attacher: Attacher, detacher: Detacher, endpoints: EndpointFiles,
                 publisher: Publisher, labels: ContainerLabels, bridge: str) -> None:
        self._networks = networks
        self._etcd = etcd
        self._records = network_records
        self._attacher = attacher
        self._detacher = detacher
        self._endpoints = endpoints
        self._publisher = publisher
        self._labels = labels
        self._bridge = bridge
        self._refused: dict[str, str] = {}  # network ID -> why etcd refused its name

    def routes(self) -> dict[str, Handler]:
        empty: Handler = lambda _: {}  # noqa: E731 - verbs with nothing to do in local scope
        return {
            "/NetworkDriver.GetCapabilities": lambda _: {"Scope": "local",
                                                        "ConnectivityScope": "global"},
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.AllocateNetwork": empty, "/NetworkDriver.FreeNetwork": empty,
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.EndpointOperInfo": lambda _: {"Value": {}},
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": self.leave,
            "/NetworkDriver.DiscoverNew": empty, "/NetworkDriver.DiscoverDelete": empty,
            "/NetworkDriver.ProgramExternalConnectivity": self.program_external,
            "/NetworkDriver.RevokeExternalConnectivity": self.revoke_external,
        }

    # --- networks ------------------------------------------------------------------------------

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        network_id = fields.docker_id(request, "NetworkID")
        vni, subnet = create_options(request)
        _, found = self._etcd.snapshot(records.vni_key(vni))
        owner = found.get(records.vni_key(vni))
        if owner is not None:
            name = owner.decode(errors="replace")
            _, nets = self._etcd.snapshot(records.network_key(name))
            raw = nets.get(records.network_key(name))
            have = NetworkRecord.from_json(raw).subnet.split(",")[0] if raw else ""
            if have and have != str(subnet):
                raise DockerError(f"vxlanID {vni} is network {name!r} in etcd, with subnet "
                                  f"{have}, not {subnet}: to join it use --subnet {have} and "
                                  f"the name {name}; otherwise pick another vxlanID")
        for other in self._networks.ours():
            if other.id != network_id and (other.options.get("vxlanID") == str(vni)
                                           or str(subnet) in other.subnets):
                raise DockerError(f"this Docker host has network {other.name} with vxlanID "
                                  f"{other.options.get('vxlanID')} and subnet "
                                  f"{','.join(other.subnets)} already: one Docker network per "
                                  "overlay network, and one per subnet (the IPAM driver tells "
                                  "them apart by subnet)")
        threading.Thread(target=self._record, args=(network_id,), daemon=True,
                         name=f"docker-network:{network_id[:12]}").start()
        return {}

    def _record(self, network_id: str) -> None:
        """Once the daemon lists the network: record it in etcd, or remember why not."""
        deadline = time.monotonic() + NAME_WAIT
        while time.monotonic() < deadline:
            try:
                net = self._networks.by_id(network_id)
            except DockerError:
                time.sleep(0.1)
                continue
            try:
                self._records.ensure_network(NetworkRecord(net.name, net.vni, str(net.subnet)))
            except CniError as err:
                self._refused[network_id] = f"network {net.name}: {err.msg}"
                log.error("Docker network %s cannot join the overlay: %s (remove it and create "
                          "it with the options etcd has)", net.name, err.msg)
            return
        log.error("Docker network %s never appeared in the daemon's list", network_id)

    def delete_network(self, request: dict[str, Any]) -> dict[str, Any]:
        network_id = fields.docker_id(request, "NetworkID")
        net = self._networks.forget(network_id)
        self._refused.pop(network_id, None)
        if net is not None:  # the record goes with the network's last endpoint anywhere
            self._records.drop_network_if_unused(NetworkRecord(net.name, net.vni,
                                                               str(net.subnet)))
        return {}

    # --- endpoints -----------------------------------------------------------------------------

    def create_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        network_id = fields.docker_id(request, "NetworkID")
        endpoint_id = fields.docker_id(request, "EndpointID")
        if network_id in self._refused:
            raise DockerError(self._refused[network_id])
        net = self._networks.by_id(network_id)
        iface = fields.mapping(request, "Interface")
        if iface.get("AddressIPv6"):
            raise DockerError("IPv6 addresses are not supported by the ovs driver")
        address = fields.ipv4_interface(iface.get("Address"), "the endpoint's address")
        mac = fields.mac(iface.get("MacAddress"), "the endpoint's MAC")
        container_id = container_id_for(mac)
        held = self._attacher.allocator.held_by(net.name, owner_of(container_id, IFNAME))
        if address.ip not in held:
            raise DockerError(f"address {address.ip} was not given to this endpoint by the ovs "
                              "IPAM driver: create the network with --ipam-driver ovs")
        given = self._labels.given_labels(fields.mapping(request, "Options"), endpoint_id)
        self._endpoints.put(endpoint_id, Endpoint(network_id, net.name, container_id,
                                                  str(address), mac, given))
        return {}

    def _endpoint(self, request: dict[str, Any]) -> tuple[str, Endpoint | None]:
        fields.docker_id(request, "NetworkID")
        endpoint_id = fields.docker_id(request, "EndpointID")
        return endpoint_id, self._endpoints.get(endpoint_id)

    def join(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id, ep = self._endpoint(request)
        if ep is None:
            raise DockerError(f"endpoint {endpoint_id} was not created by this agent (was the "
                              "agent's state directory removed?): recreate the container")
        sandbox = fields.text(request, "SandboxKey")
        if not sandbox.startswith("/"):
            raise DockerError(f"SandboxKey must be a path, got {sandbox!r}")
        net = self._networks.by_id(ep.network_id)
        ip = ep.address.split("/")[0]
        env = CniEnv("ADD", ep.container_id, sandbox, IFNAME,
                     f"IgnoreUnknown=1;IP={ip};MAC={ep.mac}")
        self._attacher.add(env, net.netconf(self._bridge, ep.labels))
        # The container's labels come after Join: the daemon names it only once Join is done.
        self._labels.follow(Attachment(endpoint_id, ep.network_id, ep.network, ep.container_id,
                                       IFNAME, sandbox, ep.labels))
        return {"InterfaceName": {"SrcName": container_side_name(ep.container_id, IFNAME),
                                  "DstPrefix": "eth"},
                "Gateway": str(net.gateway)}

    def label_joined(self) -> None:
        """At the plugin's start: the labels of endpoints joined before it (labels.py)."""
        self._labels.follow_all(self._joined)

    def _joined(self) -> list[Attachment]:
        out = []
        for endpoint_id in self._endpoints.ids():
            ep = self._endpoints.get(endpoint_id)
            rec = None if ep is None else self._attacher.endpoints.get_endpoint(
                ep.network, ep.container_id, IFNAME)
            if ep is not None and rec is not None and rec.host == self._attacher.host.name:
                out.append(Attachment(endpoint_id, ep.network_id, ep.network, ep.container_id,
                                      IFNAME, rec.netns, ep.labels))
        return out

    def _detach(self, ep: Endpoint, verb: str) -> None:
        started = time.perf_counter()
        with self._detacher.lock(owner_of(ep.container_id, IFNAME)):
            self._detacher.teardown_orphan(ep.network, ep.container_id, IFNAME)
        log.info("%s %s %s/%s (%.0f ms)", verb, ep.network, ep.container_id, IFNAME,
                 (time.perf_counter() - started) * 1000)

    def leave(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id, ep = self._endpoint(request)
        self._publisher.revoke(endpoint_id)
        if ep is not None:
            self._detach(ep, "Leave")
        return {}

    def delete_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id, ep = self._endpoint(request)
        self._publisher.revoke(endpoint_id)
        if ep is not None:  # after Leave nothing is left; after a failed Join, maybe
            self._detach(ep, "DeleteEndpoint")
            self._endpoints.remove(endpoint_id)
        return {}

    def program_external(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id, ep = self._endpoint(request)
        if ep is None:
            raise DockerError(f"endpoint {endpoint_id} is unknown to this agent")
        self._publisher.program(endpoint_id, ep.address.split("/")[0],
                                fields.mapping(request, "Options"))
        return {}

    def revoke_external(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint_id, _ = self._endpoint(request)
        self._publisher.revoke(endpoint_id)
        return {}
