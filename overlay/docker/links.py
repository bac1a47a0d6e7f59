"""The veth pair of a Docker endpoint: both ends made in the host's namespace.

libnetwork creates no link itself: Join answers with the name of an interface (SrcName) that
Docker moves into the container's namespace, renames to eth<N> and gives the endpoint's
address and MAC. So, unlike CNI ADD, the container end is left here, named after the
attachment; the host end is the same as CNI's (veth.hostside_name) and goes onto br-int by
the CNI service's own steps. Everything else of the Links port is veth.py's.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Sequence

from overlay.cni.ports import KernelLinks
from overlay.errors import CniError, Code
from overlay.model import Route
from overlay.netlink import veth
from overlay.netlink.offload import disable_tx_checksum
from overlay.netlink.rtnl import Rtnl, RtnlError


def container_side_name(container_id: str, ifname: str) -> str:
    """The name Join returns as SrcName: 'ovd' + 11 hex digits (the host end is 'ovl...')."""
    return "ovd" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


class DockerLinks(KernelLinks):
    def create_container_link(self, *, container_id: str, netns: str, ifname: str, mtu: int,
                              addresses: Sequence[veth.Interface], routes: Sequence[Route],
                              mac: str | None = None,
                              host_end_ready: Callable[[], None] | None = None
                              ) -> veth.ContainerLink:
        """The pair, both ends up to Docker: `addresses` and `routes` are set by libnetwork
        (the endpoint's address, the gateway Join returns), so they are not applied here."""
        host = veth.hostside_name(container_id, ifname)
        peer = container_side_name(container_id, ifname)
        with Rtnl() as rtnl:
            nsfd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                rtnl.add_veth(host, mtu=mtu, peer=peer, peer_netns_fd=nsfd, peer_mac=mac)
            except RtnlError as exc:
                what = "already exists" if exc.errno == errno.EEXIST else str(exc)
                raise CniError(Code.NETLINK_FAILURE, f"cannot create veth {host} with {peer}",
                               what) from None
            finally:
                os.close(nsfd)
            try:
                veth._quiet_host_side(host)  # the same host end as CNI's: see why there
                # TCP over the netdev VXLAN needs the container's TX checksums done in
                # software (docs/architecture.md); the setting moves with the link.
                disable_tx_checksum(peer)
                if host_end_ready is not None:
                    host_end_ready()
                host_index, peer_index = veth.if_index(host), veth.if_index(peer)
                if host_index is None or peer_index is None:
                    raise CniError(Code.NETLINK_FAILURE, f"veth {host} or {peer} vanished")
                return veth.ContainerLink(host, rtnl.mac(host_index), peer,
                                          rtnl.mac(peer_index), peer_index)
            except BaseException:
                veth.delete_host_link(host)
                raise
