"""`overlayctl doctor`: do etcd, OVS and the kernel agree about what is attached?

Two halves. Cluster-wide, from one etcd snapshot: no address held twice in a network, every
IP allocation belongs to an endpoint that uses it, and every endpoint's addresses are
allocated to it (built-in IPAM). Per host, each agent named with --socket checks its own OVS
ports, veths and flows against the endpoint records naming it (the agent's Doctor RPC).
No output and exit 0 means no leaks and no duplicates.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from overlay.store import records as r


def cluster_problems(state: dict[str, bytes]) -> list[str]:
    problems: list[str] = []
    endpoints: list[r.EndpointRecord] = []
    for key, value in state.items():
        if key.startswith(r.ENDPOINTS):
            try:
                endpoints.append(r.EndpointRecord.from_json(value))
            except (ValueError, TypeError, KeyError, RecursionError):
                problems.append(f"{key}: unreadable endpoint record")
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ep in endpoints:
        for ip in ep.addresses:
            users[(ep.network, str(ipaddress.ip_address(ip)))].append(
                r.owner_of(ep.container_id, ep.ifname))
    for (network, ip), owners in sorted(users.items()):
        if len(owners) > 1:
            problems.append(f"{network}: {ip} is used by {len(owners)} endpoints: "
                            + ", ".join(sorted(owners)))
    allocated: dict[tuple[str, str], str] = {}
    for key, value in state.items():
        if not key.startswith(r.IPAM):
            continue
        network, _, ip = key[len(r.IPAM):].partition("/")
        holder = r.Holder.parse(value)
        allocated[(network, ip)] = holder.owner
        if holder.owner not in users.get((network, ip), []):
            problems.append(f"{network}: {ip} is allocated to {holder.owner}, which has no "
                            "endpoint using it (leaked allocation)")
    for ep in endpoints:
        if ep.ipam != "overlay":
            continue  # addresses from a delegated IPAM plugin are not in etcd
        for ip in ep.addresses:
            owner = allocated.get((ep.network, str(ipaddress.ip_address(ip))))
            if owner != r.owner_of(ep.container_id, ep.ifname):
                problems.append(f"{ep.network}/{ep.container_id}/{ep.ifname}: {ip} is not "
                                f"allocated to it (held by {owner or 'nobody'})")
    return problems
