"""STATUS and GC (CNI 1.1.0): is this host ready for ADD, and which attachments are stale.
(The agent's own housekeeping, the janitor and the doctor, is in agent/janitor.py and
agent/doctor.py.)

STATUS answers 50 ("cannot service ADD") when OVSDB or etcd cannot be reached, and 51 ("and
existing containers may have limited connectivity") when ovs-vswitchd does not answer, since
that is what forwards their packets. A delegated IPAM plugin is asked too.

GC removes every attachment of the network on this host that the runtime did not list as
valid: flows, OVS port, veth, endpoint record, addresses. It only ever touches attachments this
host owns (OVS ports here, endpoint records and IP allocations that name this host), keeps going
when one fails, and reports all failures at the end. It then forwards GC to a delegated IPAM.

It never touches the Docker driver's attachments (container IDs "docker-<MAC>",
store/records.py): a Docker network is an etcd network like a CNI one, so a runtime that uses
a conflist of the same name (podman, containerd) would otherwise count Docker's containers as
stale, since no CNI runtime lists them. Docker removes its own through Leave; the agent's
janitor removes those whose namespace went without one.
"""

from __future__ import annotations

import logging

from overlay.cni import delegate, requests
from overlay.cni.detach import Detacher
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.ports import Allocator, EndpointStore, Flows, HostInfo, PortStore, endpoint_ports
from overlay.errors import CniError, Code
from overlay.store.records import docker_owned, owner_of

log = logging.getLogger(__name__)


def _needs_1_1(conf: NetConf, command: str) -> None:
    if not conf.at_least("1.1.0"):
        raise CniError(Code.INCOMPATIBLE_CNI_VERSION,
                       f"{command} needs cniVersion 1.1.0 or later, the netconf says "
                       f"{conf.cni_version}")


def status(env: CniEnv, conf: NetConf, *, host: HostInfo, flows: Flows, ports: PortStore,
           endpoints: EndpointStore) -> bytes:
    _needs_1_1(conf, "STATUS")
    if not flows.switch_answers():
        raise CniError(Code.LIMITED_CONNECTIVITY,
                       f"ovs-vswitchd on {host.name} does not answer; containers on this "
                       "host may have lost connectivity")
    if not ports.connected():
        raise CniError(Code.NOT_AVAILABLE, f"OVSDB on {host.name} is not reachable")
    try:
        endpoints.ping()
    except CniError as err:
        raise CniError(Code.NOT_AVAILABLE, "etcd is not reachable, so ADD cannot allocate or "
                       "publish endpoints", err.details or err.msg) from None
    if conf.ipam.delegated:
        delegate.run("STATUS", conf, env)
    return b""


def stale_attachments(conf: NetConf, keep: set[tuple[str, str]], *, host: HostInfo,
                      ports: PortStore, endpoints: EndpointStore,
                      allocator: Allocator) -> list[tuple[str, str]]:
    """(containerID, ifname) of this network on this host that `keep` does not list."""
    found = {(p.container_id, p.ifname) for p in endpoint_ports(ports, host.bridge)
             if p.network == conf.name}
    for rec in endpoints.endpoints(conf.name):
        if rec.host == host.name:
            found.add((rec.container_id, rec.ifname))
    if not conf.ipam.delegated:
        for holder in allocator.allocations(conf.name).values():
            container_id, _, ifname = holder.owner.rpartition("/")
            if holder.host == host.name and container_id and ifname:
                found.add((container_id, ifname))
    return sorted(a for a in found - keep if not docker_owned(a[0]))


def gc(env: CniEnv, conf: NetConf, *, host: HostInfo, ports: PortStore,
       endpoints: EndpointStore, allocator: Allocator, detacher: Detacher) -> bytes:
    _needs_1_1(conf, "GC")
    keep = requests.valid_attachments(conf)
    if keep is None:  # the runtime named no attachments at all: removing everything is no answer
        log.warning("GC for %s without cni.dev/valid-attachments: nothing removed", conf.name)
        return b""
    failures: list[CniError] = []
    stale = stale_attachments(conf, keep, host=host, ports=ports, endpoints=endpoints,
                              allocator=allocator)
    for container_id, ifname in stale:
        try:
            with detacher.lock(owner_of(container_id, ifname)):
                detacher.teardown(env, conf, container_id, ifname)
            log.info("GC %s removed %s/%s", conf.name, container_id, ifname)
        except CniError as err:
            failures.append(err)
    if conf.ipam.delegated:
        try:
            delegate.run("GC", conf, env)
        except CniError as err:
            # Plugins from before CNI 1.1 answer "unknown command" (4) or, lacking a container
            # ID, "unknown container" (3). Their stale leases went with the DELs above.
            if err.code not in (Code.UNKNOWN_CONTAINER, Code.INVALID_ENV):
                failures.append(err)
    if failures:
        raise CniError(failures[0].code,
                       f"GC of {conf.name} failed for {len(failures)} of {len(stale)} stale "
                       "attachments", "; ".join(str(f) for f in failures))
    return b""
