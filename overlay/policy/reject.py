"""The answer a `reject` rule sends back: a TCP reset, or an ICMP destination unreachable,
built from the refused packet's bytes (pure: bytes in, bytes out).

The packet comes from a container (a packet-in, agent/rejects.py), so it is untrusted: every
length and field is checked before it is read, anything that does not parse as the first
fragment of an IPv4 packet from a unicast source gets no answer (with the reason why), and
nothing here raises on any input (tests/unit/test_reject_packets.py fuzzes it).

The answer looks as if the refused packet's destination sent it: Ethernet and IPv4 addresses
(and TCP ports) swapped. What is sent, and why:

  TCP           a reset, as RFC 793 answers a segment for a port nobody listens on: connect()
                fails at once with ECONNREFUSED, as users of a reject expect (iptables' REJECT
                with tcp-reset, Antrea). A segment with ACK gets seq = its ack; one without gets
                ACK with ack = its seq + its length (SYN and FIN count one each). A reset never
                answers a reset.
  UDP           ICMP port unreachable (type 3 code 3), what the destination's own stack sends
                for a closed port and iptables' REJECT sends by default: a connected socket
                reads ECONNREFUSED, which applications already handle as "nobody there".
  anything else ICMP communication administratively prohibited (type 3 code 13, RFC 1812
                5.2.7.1, for packets a filter refuses): ping prints "Packet filtered". Only
                ICMP queries (echo, timestamp, ...) are answered, never an ICMP error (RFC 1122
                3.2.2: no error about an error).

An ICMP error quotes the refused packet's IP header and as much of the rest as it has, within
576 bytes in all (RFC 1812 4.3.2.3). IPv6 is not answered (its rules are not compiled yet).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

ETH_IPV4 = 0x0800
TCP, UDP, ICMP = 6, 17, 1
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
UNREACHABLE, PORT_UNREACHABLE, ADMIN_PROHIBITED = 3, 3, 13
ICMP_QUERIES = frozenset({8, 13, 15, 17})  # echo, timestamp, information, address mask
ICMP_LIMIT = 576  # an ICMP error's IP datagram, at most
TTL = 64


class Answer(NamedTuple):
    """`kind` is what `frame` is ("tcp_reset", "port_unreachable", "admin_prohibited"), or,
    when frame is None, why the packet gets no answer."""

    kind: str
    frame: bytes | None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0, TTL, proto, 0,
                         src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def _unicast(address: bytes) -> bool:
    first = address[0]
    return address != b"\0\0\0\0" and first < 224 and first != 127 \
        and address != b"\xff\xff\xff\xff"


def answer(frame: bytes) -> Answer:
    """The answer to the refused Ethernet frame `frame` (possibly cut short by the packet-in's
    max_len), or why there is none."""
    if len(frame) < 14 + 20:
        return Answer("truncated", None)
    eth_dst, eth_src, eth_type = frame[:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0]
    if eth_type != ETH_IPV4:
        return Answer("not_ipv4", None)
    if eth_src[0] & 1:
        return Answer("multicast_source", None)
    ip = frame[14:]
    version_ihl, _, total_len, _, frag, _, proto = struct.unpack_from("!BBHHHBB", ip)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or len(ip) < ihl or total_len < ihl:
        return Answer("malformed", None)
    if frag & 0x1FFF:
        return Answer("fragment", None)  # only the first fragment has the ports
    src, dst = ip[12:16], ip[16:20]
    if not _unicast(src) or not _unicast(dst):
        return Answer("not_unicast", None)
    payload = ip[ihl:total_len]  # what the packet-in holds of it (max_len may have cut it)
    head = eth_src + eth_dst + struct.pack("!H", ETH_IPV4)
    if proto == TCP:
        return _tcp_reset(head, src, dst, payload, total_len - ihl)
    if proto == ICMP and (len(payload) < 1 or payload[0] not in ICMP_QUERIES):
        return Answer("icmp_not_a_query", None)
    code = PORT_UNREACHABLE if proto == UDP else ADMIN_PROHIBITED
    quote = ip[:min(total_len, len(ip), ICMP_LIMIT - 20 - 8)]
    body = struct.pack("!BBHI", UNREACHABLE, code, 0, 0) + quote
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return Answer("port_unreachable" if code == PORT_UNREACHABLE else "admin_prohibited",
                  head + _ipv4_header(dst, src, ICMP, len(body)) + body)


def _tcp_reset(head: bytes, src: bytes, dst: bytes, segment: bytes, seg_total: int) -> Answer:
    if len(segment) < 20:
        return Answer("truncated", None)
    sport, dport, seq, ack, offset, flags = struct.unpack_from("!HHIIBB", segment)
    data_offset = (offset >> 4) * 4
    if data_offset < 20 or data_offset > seg_total:
        return Answer("malformed", None)
    if flags & TCP_RST:
        return Answer("tcp_reset_not_answered", None)
    if flags & TCP_ACK:
        reply_seq, reply_ack, reply_flags = ack, 0, TCP_RST
    else:
        length = seg_total - data_offset + (1 if flags & TCP_SYN else 0) \
            + (1 if flags & TCP_FIN else 0)
        reply_seq, reply_ack, reply_flags = 0, (seq + length) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    tcp = struct.pack("!HHIIBBHHH", dport, sport, reply_seq, reply_ack, 5 << 4, reply_flags,
                      0, 0, 0)
    pseudo = dst + src + struct.pack("!BBH", 0, TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    return Answer("tcp_reset", head + _ipv4_header(dst, src, TCP, len(tcp)) + tcp)
