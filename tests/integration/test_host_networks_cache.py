"""The subnet check's view of the host (overlay/netlink/hostnets.py, HostNetworksCache) in a
real network namespace: read once, read again after every change of an address or of a
main-table route, and not after a change the check does not read (another table's route, a
link), nor after a container's veth is attached (overlay/netlink/veth.py)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from overlay.lab.shell import run
from overlay.netlink import veth
from overlay.netlink.hostnets import HostNetworks, HostNetworksCache
from overlay.netlink.netns import run_in_netns


def ip(netns: str, *args: str) -> None:
    run(["ip", *args], netns=os.path.basename(netns))


def addresses(view: HostNetworks) -> set[str]:
    return {str(a.address) for a in view.addresses}


def main_routes(view: HostNetworks) -> set[str]:
    return {str(r.dst) for r in view.routes}


def test_the_view_is_read_again_exactly_when_what_it_holds_changed(netns: str) -> None:
    cache = HostNetworksCache()

    def look() -> HostNetworks:
        return run_in_netns(netns, cache)

    ip(netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ip(netns, "link", "set", "up0", "up")
    try:
        first = look()
        assert cache.reads == 1 and look() == first and cache.reads == 1
        ip(netns, "addr", "add", "192.0.2.10/24", "dev", "up0")
        seen = look()
        assert cache.reads == 2 and "192.0.2.10/24" in addresses(seen)
        assert "192.0.2.0/24" in main_routes(seen)  # the kernel's prefix route, in main
        # A route in another table and a new link: nothing the check reads.
        ip(netns, "route", "add", "198.51.100.0/24", "dev", "up0", "table", "100")
        ip(netns, "link", "add", "other0", "type", "veth", "peer", "name", "other0p")
        assert look() == seen and cache.reads == 2
        # A main-table route, and a deleted address: read again, each time.
        ip(netns, "route", "add", "203.0.113.0/24", "dev", "up0")
        assert "203.0.113.0/24" in main_routes(look()) and cache.reads == 3
        ip(netns, "addr", "del", "192.0.2.10/24", "dev", "up0")
        assert "192.0.2.10/24" not in addresses(look()) and cache.reads == 4
    finally:
        cache.close()


def test_a_containers_veth_does_not_change_the_hosts_view(netns: str,
                                                         netns_factory: Callable[[], str]) -> None:
    """The host end is born down and gets no IPv6 (no link-local address or route): a host
    that attaches containers keeps its view, and nothing of IPv6 reaches the container."""
    container = netns_factory()
    cache = HostNetworksCache()
    try:
        before = run_in_netns(netns, cache)
        link = run_in_netns(netns, lambda: veth.create_container_link(
            container_id="c" * 12, netns=container, ifname="eth0", mtu=1450,
            addresses=[ipaddress.ip_interface("10.9.0.2/24")], routes=[]))
        assert run_in_netns(netns, cache) == before and cache.reads == 1
        host_addrs = run(["ip", "-o", "addr", "show", "dev", link.host_ifname],
                         netns=os.path.basename(netns)).stdout
        assert "inet6" not in host_addrs, host_addrs
        state = run(["ip", "-o", "link", "show", "dev", link.host_ifname],
                    netns=os.path.basename(netns)).stdout
        assert "state UP" in state or "LOWER_UP" in state, state
    finally:
        cache.close()
