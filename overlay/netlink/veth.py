"""The container's link: a veth pair with one end in the container's netns, via pyroute2.

The host end keeps a name derived from the container and interface (hostside_name), so DEL and
a retried ADD find it without any other state. Work inside the container namespace runs on a
thread of its own (overlay.netlink.netns), so the agent's serving threads never switch
namespaces.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from overlay.errors import CniError, Code
from overlay.model import Route
from overlay.netlink.netns import run_in_netns
from overlay.netlink.offload import disable_tx_checksum
from overlay.netlink.rtnl import Rtnl, RtnlError


def hostside_name(container_id: str, ifname: str) -> str:
    """A stable host-side name: 'ovl' + 11 hex digits, within Linux's 15 characters."""
    return "ovl" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


@dataclass(frozen=True)
class ContainerLink:
    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    index: int  # ifindex inside the container namespace


@contextmanager
def netlink_session() -> Iterator[Any]:
    """A pyroute2 IPRoute socket in the calling thread's namespace, closed on exit."""
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def if_index(name: str) -> int | None:
    """The interface's index in the calling thread's namespace, or None.

    if_nametoindex(3) is one ioctl; pyroute2's link_lookup(ifname=) dumps and decodes every
    link of the namespace in Python (about 1 ms here, more under load and with many links),
    and ADD looked names up six times.
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _index(ipr: Any, name: str) -> int | None:
    return if_index(name)


def link_exists(name: str) -> bool:
    return if_index(name) is not None


Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IFA_F_NODAD = 0x02  # an address the control plane made unique needs no duplicate detection


def create_container_link(*, container_id: str, netns: str, ifname: str, mtu: int,
                          addresses: Sequence[Interface], routes: Sequence[Route],
                          mac: str | None = None,
                          host_end_ready: Callable[[], None] | None = None) -> ContainerLink:
    """Create the pair, configure the container end inside `netns`, bring both ends up.

    All-or-nothing: on any failure the pair is deleted (which removes both ends) and a
    CniError says which step failed. `host_end_ready` is called once the host end exists
    under its final name (and the container end has left for the netns), so the caller can
    start attaching it to OVS while the container end is configured.
    """
    host = hostside_name(container_id, ifname)
    with Rtnl() as rtnl:
        if if_index(host) is not None:
            raise CniError(Code.NETLINK_FAILURE, f"host interface {host} already exists",
                           "a previous ADD for this container and interface was not deleted")
        try:
            nsfd = os.open(netns, os.O_RDONLY)
        except OSError as exc:
            raise CniError(Code.NETLINK_FAILURE, f"cannot open the network namespace {netns}",
                           str(exc)) from None
        # The container end is born inside the netns under its final name (IFLA_NET_NS_FD on
        # the peer), as the reference plugins do: moving a link between namespaces afterwards
        # costs the kernel ~20 ms here (it waits for RCU), a third of an ADD, where the
        # creation itself takes ~2 ms. Its MAC is given at creation too, not by a later `set`:
        # a veth born with a random MAC is fair game for systemd-udevd
        # (MACAddressPolicy=persistent), which on a real host (seen in the Vagrant VMs)
        # replaced our MAC while we were still configuring the link; one created with
        # IFLA_ADDRESS counts as set and udev leaves it alone.
        try:
            rtnl.add_veth(host, mtu=mtu, peer=ifname, peer_netns_fd=nsfd, peer_mac=mac, up=False)
        except RtnlError as exc:
            if exc.errno == errno.EEXIST:  # not the host end (checked above): the container's
                raise CniError(Code.NETLINK_FAILURE,
                               f"interface {ifname} already exists in {netns}",
                               "pick another CNI_IFNAME or delete the existing interface") from None
            raise CniError(Code.NETLINK_FAILURE, f"cannot create veth {host} with {ifname} in "
                           f"{netns}", str(exc)) from None
        finally:
            os.close(nsfd)
        try:
            _bring_up_quietly(rtnl, host)
            if host_end_ready is not None:
                host_end_ready()
            peer_mac, index = run_in_netns(
                netns, lambda: _configure(ifname, addresses, routes, netns))
            host_index = if_index(host)
            if host_index is None:
                raise CniError(Code.NETLINK_FAILURE, f"host interface {host} vanished")
            host_mac = rtnl.mac(host_index)
            return ContainerLink(host, host_mac, ifname, peer_mac, index)
        except BaseException as exc:
            delete_host_link(host)
            if isinstance(exc, CniError):
                raise
            if isinstance(exc, OSError):  # RtnlError included
                raise CniError(Code.NETLINK_FAILURE,
                               f"cannot set up {ifname} in {netns}", str(exc)) from None
            raise


def _bring_up_quietly(rtnl: Rtnl, host: str) -> None:
    """The host end, born down: IPv6 and ARP answers off, then up. Up from the start, it had
    a link-local address and route for a moment, which could reach the container and told
    the subnet check's listener (hostnets.py) that the host's networks had changed."""
    _quiet_host_side(host)
    index = if_index(host)
    if index is None:
        raise CniError(Code.NETLINK_FAILURE, f"host interface {host} vanished")
    rtnl.set_up(index)


def _quiet_host_side(host: str) -> None:
    """The host end is only an OVS port: keep the host's kernel from talking through it.

    IPv6 off: otherwise the host's kernel sends router solicitations and MLD reports down the
    veth, and the container sees frames that came from neither its network nor any other
    container. ARP never answered (arp_ignore 8): the host owns the gateway address (on the
    gateway port), and Linux answers ARP for any of its addresses on any interface, so the
    container would learn the gateway at this veth's MAC instead of the gateway's.
    """
    for path, value in ((f"/proc/sys/net/ipv6/conf/{host}/disable_ipv6", "1"),
                        (f"/proc/sys/net/ipv4/conf/{host}/arp_ignore", "8")):
        if os.path.exists(path):
            with open(path, "w") as fh:
                fh.write(value)


def _configure(ifname: str, addresses: Sequence[Interface], routes: Sequence[Route],
               netns: str) -> tuple[str, int]:
    """Inside the container's netns: checksums, up, addresses and routes."""
    with Rtnl() as rtnl:
        idx = if_index(ifname)
        if idx is None:
            raise CniError(Code.NETLINK_FAILURE, f"{ifname} did not arrive in {netns}")
        # From this thread, in the netns: the ioctl's socket belongs to the namespace it is
        # opened in (see offload.py for why).
        disable_tx_checksum(ifname)
        rtnl.set_up(idx)
        _add_addresses(rtnl, idx, addresses, routes)
        return rtnl.mac(idx), idx


def _add_addresses(rtnl: Rtnl, idx: int, addresses: Sequence[Interface],
                   routes: Sequence[Route]) -> None:
    for address in addresses:
        rtnl.add_address(idx, address, IFA_F_NODAD if address.version == 6 else 0)
    for route in routes:
        rtnl.add_route(route.dst, idx, route.gw)


def add_container_addresses(*, netns: str, ifname: str, addresses: Sequence[Interface],
                            routes: Sequence[Route]) -> None:
    """Put addresses and routes on a container link made without them (create_container_link
    with none): a delegated IPAM plugin chooses them once the link exists. The link itself is
    removed by the caller's undo (delete_host_link) if this fails."""
    def configure() -> None:
        with Rtnl() as rtnl:
            idx = if_index(ifname)
            if idx is None:
                raise CniError(Code.NETLINK_FAILURE, f"interface {ifname} vanished from {netns}")
            _add_addresses(rtnl, idx, addresses, routes)
    try:
        run_in_netns(netns, configure)
    except OSError as exc:  # RtnlError included
        raise CniError(Code.NETLINK_FAILURE, f"cannot put the lease on {ifname} in {netns}",
                       str(exc)) from None


def delete_host_link(host_ifname: str) -> bool:
    """Delete the pair by its host end. Returns False if it was already gone."""
    idx = if_index(host_ifname)
    if idx is None:
        return False
    with Rtnl() as rtnl:
        try:
            rtnl.delete_link(idx)
        except RtnlError as exc:
            if exc.errno != errno.ENODEV:  # deleted under us, which is what we wanted
                raise CniError(Code.NETLINK_FAILURE, f"cannot delete {host_ifname}",
                               str(exc)) from None
        return True


@dataclass(frozen=True)
class LinkView:
    """What CHECK compares against the recorded endpoint."""

    mac: str
    mtu: int
    addresses: tuple[str, ...]
    up: bool
    routes: frozenset[tuple[str, str]]  # (dst, gateway or "")


def inspect_container_link(netns: str, ifname: str) -> LinkView | None:
    try:
        return run_in_netns(netns, lambda: _inspect(ifname))
    except OSError as exc:
        raise CniError(Code.NETLINK_FAILURE, f"cannot look into {netns}", str(exc)) from None


def _inspect(ifname: str) -> LinkView | None:
    with netlink_session() as ns:
        idx = _index(ns, ifname)
        if idx is None:
            return None
        link = ns.get_links(idx)[0]
        addrs = tuple(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                      for a in ns.get_addr(index=idx))
        routes = set()
        for family in (2, 10):  # AF_INET, AF_INET6
            for r in ns.get_routes(family=family, oif=idx, table=254):
                dst = r.get_attr("RTA_DST")
                dst = f"{dst}/{r['dst_len']}" if dst else ("0.0.0.0/0" if family == 2 else "::/0")
                routes.add((str(ipaddress.ip_network(dst, strict=False)),
                            r.get_attr("RTA_GATEWAY") or ""))
        return LinkView(link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"), addrs,
                        link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN"), frozenset(routes))
