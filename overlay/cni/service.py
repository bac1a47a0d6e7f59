"""The CNI verbs of this host, as the gRPC server calls them: ADD (attach.py), DEL
(detach.py), CHECK (checks.py), STATUS and GC (housekeeping.py).

Each verb is given the ports it uses (ports.py), never the service: the service only wires
them, and shares between the verbs what must be shared, one lock per container interface (calls
for the same one are serialised; different containers proceed in parallel) and the pool of
threads on which steps run beside the others.
"""

from __future__ import annotations

import copy
from concurrent import futures

from overlay.cni import housekeeping
from overlay.cni.attach import Attacher
from overlay.cni.checks import Checker
from overlay.cni.detach import Detacher
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.ports import (
    Allocator,
    EndpointStore,
    Flows,
    Gateways,
    KernelLinks,
    Links,
    NetworkInterest,
    NetworkStore,
    PortStore,
    SubnetCheck,
)
from overlay.cni.ports import HostInfo as HostInfo  # re-exported: the agent builds one
from overlay.cni.steps import StripedLock, log
from overlay.errors import CniError, Code
from overlay.store.records import DOCKER_PREFIX, docker_owned


class CniService:
    def __init__(self, *, host: HostInfo, endpoints: EndpointStore,
                 network_records: NetworkStore, ports: PortStore, flows: Flows,
                 allocator: Allocator, gateways: Gateways, networks: NetworkInterest,
                 subnets: SubnetCheck, links: Links | None = None) -> None:
        self.host = host
        self._endpoints = endpoints
        self._ports = ports
        self._flows = flows
        self._allocator = allocator
        links = links or KernelLinks()
        lock = StripedLock()
        # Steps of an ADD or DEL that run beside its others (Attacher._beside; the gateway in
        # Detacher._detach). None waits for another task of this pool, so a full pool only
        # queues: an ADD submits up to four (network, port, record, gateway), a DEL one, and
        # the gRPC pool serves 16 calls. With 8 threads, 10 ADDs at once queued their steps
        # behind each other's (most of them wait on etcd or ovsdb-server, not on the CPU).
        background = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="cni-bg")
        self._background = background
        self.attacher = Attacher(
            host=host, endpoints=endpoints, network_records=network_records, ports=ports,
            flows=flows, allocator=allocator, gateways=gateways, links=links, networks=networks,
            subnets=subnets, lock=lock, background=background)
        # DEL's steps, also those of GC and of the agent's janitor (agent/janitor.py).
        self.detacher = Detacher(
            host=host, endpoints=endpoints, ports=ports, flows=flows, allocator=allocator,
            gateways=gateways, links=links, lock=lock, background=background)
        self._checker = Checker(
            host=host, endpoints=endpoints, ports=ports, flows=flows, allocator=allocator,
            gateways=gateways, links=links, lock=lock)

    def close(self) -> None:
        """Ends the pool of ADD's and DEL's side steps, once those running are done (after the
        gRPC server stopped: no call is left to submit one)."""
        self._background.shutdown(wait=True)

    def attacher_for(self, links: Links) -> tuple[Attacher, Detacher]:
        """ADD's and DEL's steps on other links (Docker's, overlay/docker/links.py: libnetwork
        moves the container end itself), with this service's parts, lock and pool."""
        attacher, detacher = copy.copy(self.attacher), copy.copy(self.detacher)
        attacher.links = detacher.links = links
        return attacher, detacher

    def add(self, env: CniEnv, conf: NetConf) -> bytes:
        if docker_owned(env.container_id):  # the Docker driver's namespace (store/records.py)
            raise CniError(Code.INVALID_ENV, f"CNI_CONTAINERID {env.container_id!r}: IDs that "
                           f"begin with {DOCKER_PREFIX!r} are the Docker driver's attachments",
                           "use another container ID")
        return self.attacher.add(env, conf)

    def delete(self, env: CniEnv, conf: NetConf) -> bytes:
        if docker_owned(env.container_id):  # no CNI ADD made it: not this runtime's to remove
            log.info("DEL %s %s/%s: the Docker driver's attachment, left to it", conf.name,
                     env.container_id, env.ifname)
            return b""
        return self.detacher.delete(env, conf)

    def check(self, env: CniEnv, conf: NetConf) -> bytes:
        return self._checker.check(env, conf)

    def status(self, env: CniEnv, conf: NetConf) -> bytes:
        return housekeeping.status(env, conf, host=self.host, flows=self._flows,
                                   ports=self._ports, endpoints=self._endpoints)

    def gc(self, env: CniEnv, conf: NetConf) -> bytes:
        return housekeeping.gc(env, conf, host=self.host, ports=self._ports,
                               endpoints=self._endpoints, allocator=self._allocator,
                               detacher=self.detacher)
