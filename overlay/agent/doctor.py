"""This host's half of `overlayctl doctor` (the agent's Doctor RPC): do OVS, the kernel and
etcd agree about what is attached here? The cluster-wide half, from one etcd snapshot, is
cli/doctor.py.

Every endpoint record naming this host has its OVS port, veth, flows and addresses, every
endpoint port on the bridge has its record, and every gateway is whole.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from overlay.cni.ports import (
    Allocator,
    EndpointStore,
    Flows,
    HostInfo,
    Links,
    PortStore,
    endpoint_ports,
)
from overlay.model import endpoint_key
from overlay.store.records import owner_of


class GatewayDoctor(Protocol):
    """The gateways' own check (gateway/manager.py)."""

    def doctor(self) -> list[str]: ...


class HostDoctor:
    def __init__(self, *, host: HostInfo, ports: PortStore, endpoints: EndpointStore,
                 flows: Flows, allocator: Allocator, links: Links,
                 gateways: GatewayDoctor) -> None:
        self._host = host
        self._ports = ports
        self._endpoints = endpoints
        self._flows = flows
        self._allocator = allocator
        self._links = links
        self._gateways = gateways

    def problems(self) -> list[str]:
        """Invariants of this host: every endpoint record of the host has its OVS port, veth,
        flows and addresses, and every endpoint port has its record. Empty means healthy."""
        problems = []
        ports = {(p.network, p.container_id, p.ifname): p.port
                 for p in endpoint_ports(self._ports, self._host.bridge)}
        records = {(r.network, r.container_id, r.ifname): r
                   for r in self._endpoints.all_endpoints() if r.host == self._host.name}
        flows = self._flows.local_keys()
        allocations = {net: self._allocator.allocations(net) for net in {k[0] for k in records}}
        for key, rec in records.items():
            name = "/".join(key)
            if key not in ports or self._ports.ofport(rec.port) is None:
                problems.append(f"{name}: endpoint record without a working OVS port {rec.port}")
            if not self._links.link_exists(rec.port):
                problems.append(f"{name}: endpoint record without its veth {rec.port}")
            if endpoint_key(*key) not in flows:
                problems.append(f"{name}: no flows installed")
            for ip in rec.addresses:
                holder = allocations[rec.network].get(ipaddress.ip_address(ip))
                if holder is not None and holder.owner != owner_of(rec.container_id, rec.ifname):
                    problems.append(f"{name}: address {ip} is held by {holder.owner}")
        for key in ports:
            if key not in records:
                problems.append(f"{'/'.join(key)}: OVS port {ports[key]} without an endpoint "
                                "record")
        # Gateways: each one whole (port, address, routes, rule, iptables, flows), none without
        # containers, no iptables rule or route rule left by a gateway that is gone.
        problems += self._gateways.doctor()
        return problems
