"""Send one hand-made frame out of eth0 (run inside a container's namespace, as root).

    forge.py icmp SRC_MAC DST_MAC SRC_IP DST_IP MARKER
    forge.py arp-reply SRC_MAC DST_MAC SENDER_IP TARGET_IP MARKER
    forge.py nd KIND SRC_MAC DST_MAC SRC_IP DST_IP TARGET LLADDR MARKER
        KIND na, ns, ra or redirect; LLADDR the link-layer option's MAC, or - for none
    forge.py udp SRC_MAC DST_MAC SRC_IP DST_IP SPORT DPORT MARKER    (IPv4 or IPv6)

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


def ipv6(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, proto: int, body: bytes,
         hop_limit: int) -> bytes:
    src, dst = socket.inet_pton(socket.AF_INET6, src_ip), socket.inet_pton(socket.AF_INET6, dst_ip)
    pseudo = src + dst + struct.pack("!I3xB", len(body), proto)
    sum_at = 2 if proto == 58 else 6  # ICMPv6 / UDP checksum offset
    body = body[:sum_at] + struct.pack("!H", checksum(pseudo + body)) + body[sum_at + 2:]
    header = struct.pack("!IHBB16s16s", 0x60000000, len(body), proto, hop_limit, src, dst)
    return mac(dst_mac) + mac(src_mac) + b"\x86\xdd" + header + body


ND_TYPES = {"ra": 134, "ns": 135, "na": 136, "redirect": 137}


def nd(kind: str, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, target: str,
       lladdr: str, marker: str) -> bytes:
    """A neighbour-discovery message; MARKER is an Ethernet trailer after the IPv6 packet
    (outside its payload length), so neither OVS nor the kernel parse it."""
    kind_type = ND_TYPES[kind]
    target_b = socket.inet_pton(socket.AF_INET6, target)
    if kind == "ra":  # hop limit 64, no flags, router lifetime 1800 s
        body = struct.pack("!BBHBBHII", kind_type, 0, 0, 64, 0, 1800, 0, 0)
    elif kind == "redirect":  # target (the better first hop), destination
        body = struct.pack("!BBHI16s16s", kind_type, 0, 0, 0, target_b,
                           socket.inet_pton(socket.AF_INET6, dst_ip))
    else:  # NS, NA (flags: override)
        body = struct.pack("!BBHI16s", kind_type, 0, 0, 0x20000000 if kind == "na" else 0,
                           target_b)
    if lladdr != "-":  # option 1: source link-layer address (NS, RA, redirect), 2: target (NA)
        body += struct.pack("!BB6s", 2 if kind == "na" else 1, 1, mac(lladdr))
    return ipv6(src_mac, dst_mac, src_ip, dst_ip, 58, body, 255) + marker.encode()


def udp(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: str, dport: str,
        marker: str) -> bytes:
    payload = marker.encode()
    body = struct.pack("!HHHH", int(sport), int(dport), 8 + len(payload), 0) + payload
    if ":" in src_ip:
        return ipv6(src_mac, dst_mac, src_ip, dst_ip, 17, body, 64)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                         socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + header + body


def main() -> None:
    kind, *args = sys.argv[1:]
    frame = {"icmp": icmp, "arp-reply": arp_reply, "nd": nd, "udp": udp}[kind](*args)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("eth0", 0))
        for _ in range(3):
            sock.send(frame)


if __name__ == "__main__":
    main()
