"""Send one hand-made frame out of eth0 (run inside a container's namespace, as root).

    forge.py icmp SRC_MAC DST_MAC SRC_IP DST_IP MARKER
    forge.py arp-reply SRC_MAC DST_MAC SENDER_IP TARGET_IP MARKER

For the anti-spoofing tests: the kernel would never send these with a wrong source, so we
build them byte by byte. MARKER ends up in the payload (ICMP) or trailer (ARP), so a capture
on the receiving side can tell our frames from anything else.
"""

from __future__ import annotations

import socket
import struct
import sys


def mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, marker: str) -> bytes:
    payload = marker.encode()
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + payload
    echo = echo[:2] + struct.pack("!H", checksum(echo)) + echo[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(echo), 1, 0, 64, 1, 0,
                         socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + header + echo


def arp_reply(src_mac: str, dst_mac: str, sender_ip: str, target_ip: str, marker: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(src_mac),
                       socket.inet_aton(sender_ip), mac(dst_mac), socket.inet_aton(target_ip))
    return mac(dst_mac) + mac(src_mac) + b"\x08\x06" + body + marker.encode()


def main() -> None:
    kind, *args = sys.argv[1:]
    frame = {"icmp": icmp, "arp-reply": arp_reply}[kind](*args)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("eth0", 0))
        for _ in range(3):
            sock.send(frame)


if __name__ == "__main__":
    main()
