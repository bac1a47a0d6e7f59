"""What an attachment whose address comes from a delegated IPAM plugin needs beyond the lease.

The built-in allocator knows the address before the link exists, so the MAC can be derived
from it (service.mac_for). A delegated plugin runs once the link exists, as the reference
`bridge` plugin calls IPAM after creating its veth: `dhcp` needs the interface up in the
container's namespace to send its DISCOVER from it. So the MAC has to be chosen first, from
what is known then: the container ID and interface name.

Routes: `dhcp` returns the routes the server's options say (a default route via the router
option, or option 121/33). A netconf that lists `ipam.routes` gets exactly those instead, as
it does with the built-in IPAM (docs/cni-reference.md); the CNI spec's historical example does
so. A route without `gw` goes via the lease's gateway of its family, as the reference plugins'
ConfigureIface does; the result still shows the route as the netconf wrote it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from overlay.cni.netconf import NetConf
from overlay.ipam.allocator import Assigned
from overlay.model import Route

DHCP = "dhcp"
LEASE_MAC_PREFIX = "0a:d4"  # locally administered unicast; not 0a:58 (mac_for's addresses)


def lease_mac(container_id: str, ifname: str) -> str:
    """A stable MAC for one attachment: 0a:d4 and 4 bytes of a hash of container and interface.

    Stable, so that an ADD retried after a failure, and the DHCP server's view of the client
    (dnsmasq keys leases by MAC when no client ID is sent), stay the same. 32 bits: two
    attachments of one network share a MAC with odds of about n^2 / 2^33 (1 in 850 for 4,000).
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).digest()
    return LEASE_MAC_PREFIX + ":" + ":".join(f"{b:02x}" for b in digest[:4])


def is_dhcp(conf: NetConf) -> bool:
    return conf.ipam.type == DHCP


def chosen_routes(conf: NetConf, lease_routes: Sequence[Route]) -> tuple[Route, ...]:
    """The routes of the result: the netconf's `ipam.routes` when it lists any (dhcp ignores
    them), else what the plugin returned."""
    if is_dhcp(conf) and conf.ipam.routes_given:
        return conf.ipam.routes
    return tuple(lease_routes)


def installed_routes(routes: Sequence[Route], assigned: Sequence[Assigned]) -> tuple[Route, ...]:
    """The routes as they go into the container: a missing gw is the lease's gateway of the
    route's family (none: a link route)."""
    out = []
    for r in routes:
        gw = r.gw
        if gw is None:
            gw = next((a.gateway for a in assigned
                       if a.gateway is not None and a.gateway.version == r.dst.version), None)
        out.append(Route(r.dst, gw))
    return tuple(out)
