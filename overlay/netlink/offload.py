"""Turning off TX checksum offload on an interface (what `ethtool -K IF tx off` does).

Why: OVS's userspace (netdev) datapath reads container frames through AF_PACKET and
encapsulates them without finishing checksums the kernel left for "hardware" to fill in. TCP
across a netdev VXLAN tunnel then carries bad checksums and stalls after the handshake; ICMP and
UDP do not show it. With TX checksum offload off, the container's kernel computes checksums in
software and every datapath is happy. The ioctl acts on the interface of that name in the
namespace its socket was opened in, so for a container's link it is called from a thread inside
the container's netns (overlay.netlink.netns).

A raw SIOCETHTOOL ioctl (ETHTOOL_STXCSUM) keeps this free of subprocesses and of pyroute2's
untyped ethtool wrapper.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def _ethtool_value(ifname: str, cmd: int, data: int = 0) -> int:
    value = ctypes.create_string_buffer(struct.pack("II", cmd, data))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", value.raw[:8])[1])


def disable_tx_checksum(ifname: str) -> None:
    _ethtool_value(ifname, ETHTOOL_STXCSUM, 0)

