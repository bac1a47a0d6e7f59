"""The host's WireGuard device, configured over netlink with pyroute2: the link and its
address through rtnetlink (IPRoute), keys, port and peers through WireGuard's generic netlink
family (pyroute2.WireGuard). Nothing here runs `ip` or `wg`; the one place the agent shells
out for encryption is the iptables guard (guard.py), as no library writes iptables rules.

Idempotent: ensure() converges an existing device (an agent restart finds the one it made,
with its peers and sessions, and traffic never stops), set_peer() replaces a peer's settings,
remove_peer() of an unknown key does nothing.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from overlay.errors import CniError, Code
from overlay.wireguard.peers import Peer

# A route that only matters when the device is gone: the WireGuard subnet must never be
# routed out of the underlay in clear text (the device's own route, metric 0, wins while it is up).
BLACKHOLE_METRIC = 4242


@dataclass(frozen=True)
class PeerStats:
    public_key: str
    endpoint: str
    last_handshake: float   # seconds since the epoch; 0: never
    rx_bytes: int
    tx_bytes: int


def _fail(what: str, exc: Exception) -> CniError:
    return CniError(Code.NETLINK_FAILURE, f"WireGuard: {what}", str(exc))


class Device:
    def __init__(self, *, ifname: str, address: str, subnet: str, port: int, mtu: int) -> None:
        self.ifname = ifname
        self.address = address      # this host's WireGuard address
        self.subnet = subnet        # every host's WireGuard address is in it
        self.port = port
        self.mtu = mtu              # underlay MTU - WireGuard's overhead

    def ensure(self, private_b64: str) -> None:
        """The device up with its address, MTU, port and private key (made if missing)."""
        net = ipaddress.IPv4Network(self.subnet)
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.ifname)
                if not found:
                    ipr.link("add", ifname=self.ifname, kind="wireguard")
                    found = ipr.link_lookup(ifname=self.ifname)
                index = found[0]
                ipr.link("set", index=index, mtu=self.mtu)
                ipr.addr("replace", index=index, address=self.address, prefixlen=net.prefixlen)
                ipr.link("set", index=index, state="up")
                ipr.route("replace", dst=str(net), type="blackhole", priority=BLACKHOLE_METRIC)
        except NetlinkError as exc:
            raise _fail(f"cannot set up {self.ifname}", exc) from None
        self.set_private_key(private_b64)

    def set_private_key(self, private_b64: str) -> None:
        try:
            with WireGuard() as wg:
                wg.set(self.ifname, private_key=private_b64, listen_port=self.port)
        except (NetlinkError, OSError) as exc:
            raise _fail(f"cannot set the key and port of {self.ifname}", exc) from None

    def set_peer(self, peer: Peer) -> None:
        """Only the peer's WireGuard address is allowed through it (/32): what it sends from
        any other source is dropped by WireGuard, and it receives only its own VXLAN."""
        try:
            with WireGuard() as wg:
                wg.set(self.ifname, peer={
                    "public_key": peer.public_key, "endpoint_addr": peer.endpoint,
                    "endpoint_port": peer.port, "persistent_keepalive": 25,
                    "replace_allowed_ips": True, "allowed_ips": [f"{peer.address}/32"]})
        except (NetlinkError, OSError, ValueError) as exc:
            raise _fail(f"cannot set peer {peer.host}", exc) from None

    def remove_peer(self, public_b64: str) -> None:
        try:
            with WireGuard() as wg:
                wg.set(self.ifname, peer={"public_key": public_b64, "remove": True})
        except (NetlinkError, OSError, ValueError) as exc:
            raise _fail("cannot remove a peer", exc) from None

    def peers(self) -> list[PeerStats]:
        out = []
        for msg in self._info():  # a device with many peers comes in several messages
            for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                endpoint = peer.get_attr("WGPEER_A_ENDPOINT") or {}
                handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                out.append(PeerStats(
                    public_key=_text(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
                    endpoint=f"{endpoint.get('addr', '')}:{endpoint.get('port', '')}",
                    last_handshake=float(handshake.get("tv_sec", 0) or 0),
                    rx_bytes=int(peer.get_attr("WGPEER_A_RX_BYTES") or 0),
                    tx_bytes=int(peer.get_attr("WGPEER_A_TX_BYTES") or 0)))
        return out

    def public_key(self) -> str:
        """The public key the kernel derived from the private key it holds."""
        for msg in self._info():
            key = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
            if key:
                return _text(key)
        return ""

    def exists(self) -> bool:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=self.ifname))

    def _info(self) -> list[Any]:
        try:
            with WireGuard() as wg:
                return list(wg.info(self.ifname))
        except (NetlinkError, OSError) as exc:
            raise _fail(f"cannot read {self.ifname}", exc) from None


def _text(value: Any) -> str:
    """A key as pyroute2 decodes it (base64 bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value or "")


def unavailable(datapath: str, ifname: str) -> str:
    """Why this host cannot carry encrypted networks, or "" if it can."""
    if datapath != "system":
        return ("OVS runs the userspace (netdev) datapath here, which builds tunnel headers "
                "itself and bypasses the kernel's routing, so VXLAN cannot be routed into "
                "WireGuard; the kernel datapath (openvswitch.ko) is needed")
    try:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=ifname):
                return ""
            ipr.link("add", ifname=ifname, kind="wireguard")  # loads the module if it can
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT):
            return f"the kernel has no WireGuard (creating a wireguard link failed: {exc})"
        return f"cannot create the WireGuard device {ifname}: {exc}"
    except OSError as exc:  # no netlink at all (a container without CAP_NET_ADMIN)
        return f"cannot create the WireGuard device {ifname}: {exc}"
    return ""
