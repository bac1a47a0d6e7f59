"""The janitor: remove the attachments whose container vanished without a DEL.

A runtime that crashes, or a host that reboots, never sends DEL for its containers; their
ports, flows, endpoint records and addresses would stay for good. The agent runs the janitor
at start (before it serves CNI, so a runtime's first calls do not meet the leftovers) and then
once a minute (agent/main.py). It removes through the same steps as DEL, under the same lock
(cni/detach.py), and only what this host owns.
"""

from __future__ import annotations

import logging
import os

from overlay.cni.detach import Detacher
from overlay.cni.ports import EndpointStore, HostInfo, Links, PortStore, endpoint_ports
from overlay.store.records import EndpointRecord, owner_of

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, *, host: HostInfo, ports: PortStore, endpoints: EndpointStore,
                 links: Links, detacher: Detacher) -> None:
        self._host = host
        self._ports = ports
        self._endpoints = endpoints
        self._links = links
        self._detacher = detacher

    def run(self, own_records: list[EndpointRecord] | None = None) -> list[str]:
        """Remove attachments whose container vanished without a DEL. Returns what it removed.

        `own_records` are the endpoint records naming this host as the watches know them (the
        periodic run: no etcd read); None reads every endpoint record from etcd, page by page
        (the run at start, which also finds records in networks this host no longer follows).

        An attachment is gone when its network namespace no longer exists or its veth has
        disappeared (the kernel deletes the pair when the namespace goes). Endpoint records that
        name this host but have no port left are stale too. Anything whose namespace and veth
        still exist is in use and left alone. Addresses from a delegated IPAM stay with that
        plugin (we do not have its configuration here); CNI GC or the runtime's DEL frees them.
        """
        removed = []
        with_port = set()
        for p in endpoint_ports(self._ports, self._host.bridge):
            with_port.add((p.network, p.container_id, p.ifname))
            if p.netns and os.path.exists(p.netns) and self._links.link_exists(p.port):
                continue
            with self._detacher.lock(owner_of(p.container_id, p.ifname)):
                self._detacher.teardown_orphan(p.network, p.container_id, p.ifname)
            removed.append(f"{p.network}/{p.container_id}/{p.ifname} "
                           f"(netns {p.netns or '?'} is gone)")
        records = self._endpoints.all_endpoints() if own_records is None else own_records
        for rec in records:
            key = (rec.network, rec.container_id, rec.ifname)
            if rec.host != self._host.name or key in with_port:
                continue
            with self._detacher.lock(owner_of(rec.container_id, rec.ifname)):
                if self._ports.ofport(rec.port) is not None:  # an ADD finished meanwhile
                    continue
                self._detacher.teardown_orphan(rec.network, rec.container_id, rec.ifname)
            removed.append(f"{rec.network}/{rec.container_id}/{rec.ifname} "
                           "(no port on this host)")
        for line in removed:
            log.info("janitor removed %s", line)
        return removed
