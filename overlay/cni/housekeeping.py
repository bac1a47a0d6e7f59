"""STATUS and GC (CNI 1.1.0), the janitor and the doctor: is this host ready for ADD, which
attachments are stale, and do OVS, the kernel and etcd agree about what is attached.

STATUS answers 50 ("cannot service ADD") when OVSDB or etcd cannot be reached, and 51 ("and
existing containers may have limited connectivity") when ovs-vswitchd does not answer, since
that is what forwards their packets. A delegated IPAM plugin is asked too.

GC removes every attachment of the network on this host that the runtime did not list as
valid: flows, OVS port, veth, endpoint record, addresses. It only ever touches attachments this
host owns (OVS ports here, endpoint records and IP allocations that name this host), keeps going
when one fails, and reports all failures at the end. It then forwards GC to a delegated IPAM.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from overlay.cni import delegate, requests
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.service import CniService
from overlay.errors import CniError, Code
from overlay.model import endpoint_key
from overlay.netlink import veth
from overlay.ovs import portschema
from overlay.store.records import EndpointRecord, owner_of

log = logging.getLogger(__name__)


def _needs_1_1(conf: NetConf, command: str) -> None:
    if not conf.at_least("1.1.0"):
        raise CniError(Code.INCOMPATIBLE_CNI_VERSION,
                       f"{command} needs cniVersion 1.1.0 or later, the netconf says "
                       f"{conf.cni_version}")


def status(service: CniService, env: CniEnv, conf: NetConf) -> bytes:
    _needs_1_1(conf, "STATUS")
    if not service.dataplane.switch_answers():
        raise CniError(Code.LIMITED_CONNECTIVITY,
                       f"ovs-vswitchd on {service.host.name} does not answer; containers on this "
                       "host may have lost connectivity")
    if not service.ovs.connected():
        raise CniError(Code.NOT_AVAILABLE, f"OVSDB on {service.host.name} is not reachable")
    try:
        service.store.ping()
    except CniError as err:
        raise CniError(Code.NOT_AVAILABLE, "etcd is not reachable, so ADD cannot allocate or "
                       "publish endpoints", err.details or err.msg) from None
    if conf.ipam.delegated:
        delegate.run("STATUS", conf, env)
    return b""


def stale_attachments(service: CniService, conf: NetConf,
                      keep: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """(containerID, ifname) of this network on this host that `keep` does not list."""
    found = {(container_id, ifname)
             for _, network, container_id, ifname, _ in _local_endpoint_ports(service)
             if network == conf.name}
    for rec in service.store.endpoints(conf.name):
        if rec.host == service.host.name:
            found.add((rec.container_id, rec.ifname))
    if not conf.ipam.delegated:
        for holder in service.store.allocations(conf.name).values():
            container_id, _, ifname = holder.owner.rpartition("/")
            if holder.host == service.host.name and container_id and ifname:
                found.add((container_id, ifname))
    return sorted(found - keep)


def gc(service: CniService, env: CniEnv, conf: NetConf) -> bytes:
    _needs_1_1(conf, "GC")
    keep = requests.valid_attachments(conf)
    if keep is None:  # the runtime named no attachments at all: removing everything is no answer
        log.warning("GC for %s without cni.dev/valid-attachments: nothing removed", conf.name)
        return b""
    failures: list[CniError] = []
    stale = stale_attachments(service, conf, keep)
    for container_id, ifname in stale:
        try:
            with service.lock(owner_of(container_id, ifname)):
                service.teardown(env, conf, container_id, ifname)
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


def _local_endpoint_ports(service: CniService) -> list[tuple[str, str, str, str, str]]:
    """(port, network, containerID, ifname, netns) of every endpoint port on the bridge."""
    out = []
    for port in service.ovs.ports(service.host.bridge):
        owner = portschema.owner(port.external_ids)
        if owner is not None:
            out.append((port.name, owner.network, owner.container_id, owner.ifname,
                        owner.netns))
    return out


def janitor(service: CniService, own_records: list[EndpointRecord] | None = None) -> list[str]:
    """Remove attachments whose container vanished without a DEL. Returns what it removed.

    `own_records` are the endpoint records naming this host as the watches know them (the
    periodic run: no etcd read); None reads every endpoint record from etcd, page by page (the
    run at start, which also finds records in networks this host no longer follows).

    An attachment is gone when its network namespace no longer exists or its veth has
    disappeared (the kernel deletes the pair when the namespace goes). Endpoint records that
    name this host but have no port left are stale too. Anything whose namespace and veth
    still exist is in use and left alone. Addresses from a delegated IPAM stay with that plugin
    (we do not have its configuration here); CNI GC or the runtime's DEL frees them.
    """
    removed = []
    with_port = set()
    for port, network, container_id, ifname, netns in _local_endpoint_ports(service):
        with_port.add((network, container_id, ifname))
        if netns and os.path.exists(netns) and veth.link_exists(port):
            continue
        with service.lock(owner_of(container_id, ifname)):
            service.teardown_orphan(network, container_id, ifname)
        removed.append(f"{network}/{container_id}/{ifname} (netns {netns or '?'} is gone)")
    records = service.store.all_endpoints() if own_records is None else own_records
    for rec in records:
        key = (rec.network, rec.container_id, rec.ifname)
        if rec.host != service.host.name or key in with_port:
            continue
        with service.lock(owner_of(rec.container_id, rec.ifname)):
            if service.ovs.ofport(rec.port) is not None:  # an ADD finished in the meantime
                continue
            service.teardown_orphan(rec.network, rec.container_id, rec.ifname)
        removed.append(f"{rec.network}/{rec.container_id}/{rec.ifname} (no port on this host)")
    for line in removed:
        log.info("janitor removed %s", line)
    return removed


def doctor(service: CniService) -> list[str]:
    """Invariants of this host: every endpoint record of the host has its OVS port, veth,
    flows and addresses, and every endpoint port has its record. Empty means healthy."""
    problems = []
    ports = {(n, c, i): p for p, n, c, i, _ in _local_endpoint_ports(service)}
    records = {(r.network, r.container_id, r.ifname): r for r in service.store.all_endpoints()
               if r.host == service.host.name}
    flows = service.dataplane.local_keys()
    allocations = {net: service.store.allocations(net) for net in {k[0] for k in records}}
    for key, rec in records.items():
        name = "/".join(key)
        if key not in ports or service.ovs.ofport(rec.port) is None:
            problems.append(f"{name}: endpoint record without a working OVS port {rec.port}")
        if not veth.link_exists(rec.port):
            problems.append(f"{name}: endpoint record without its veth {rec.port}")
        if endpoint_key(*key) not in flows:
            problems.append(f"{name}: no flows installed")
        for ip in rec.addresses:
            holder = allocations[rec.network].get(ipaddress.ip_address(ip))
            if holder is not None and holder.owner != owner_of(rec.container_id, rec.ifname):
                problems.append(f"{name}: address {ip} is held by {holder.owner}")
    for key in ports:
        if key not in records:
            problems.append(f"{'/'.join(key)}: OVS port {ports[key]} without an endpoint record")
    # Gateways: each one whole (port, address, routes, rule, iptables, flows), none without
    # containers, no iptables rule or route rule left by a gateway that is gone.
    problems += service.gateways.doctor()
    return problems
