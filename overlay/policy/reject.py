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

IPv6 the same way (RFC 4443): a TCP reset, ICMPv6 port unreachable (type 1 code 4) for UDP,
and "communication with destination administratively prohibited" (type 1 code 1) for the
rest, ICMPv6 echo requests included (ping prints "Administratively prohibited"); no answer to
an ICMPv6 error, to a later fragment, or from or to a multicast address. Extension headers
other than a fragment header are not walked: a packet behind them gets code 1.

An ICMP error quotes the refused packet's IP header and as much of the rest as it has, within
576 bytes in all for IPv4 (RFC 1812 4.3.2.3) and 1280 for IPv6 (RFC 4443 2.4).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
TCP, UDP, ICMP, ICMPV6, FRAGMENT = 6, 17, 1, 58, 44
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
# (type, port unreachable code, administratively prohibited code) of each version's error.
UNREACHABLE = {4: (3, 3, 13), 6: (1, 4, 1)}
QUERIES = {4: frozenset({8, 13, 15, 17}),  # echo, timestamp, information, address mask
           6: frozenset({128})}            # echo
LIMIT = {4: 576, 6: 1280}  # an ICMP error's IP packet, at most
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


class _Turned(NamedTuple):
    """The answer's Ethernet header and addresses: the refused packet's, swapped."""

    head: bytes
    src: bytes  # the refused packet's destination
    dst: bytes

    @property
    def version(self) -> int:
        return 6 if len(self.src) == 16 else 4

    def packet(self, proto: int, payload: bytes) -> bytes:
        if self.version == 6:
            return self.head + struct.pack("!IHBB", 6 << 28, len(payload), proto, TTL) \
                + self.src + self.dst + payload
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, TTL, proto, 0,
                             self.src, self.dst)
        return self.head + header[:10] + struct.pack("!H", checksum(header)) + header[12:] \
            + payload

    def pseudo(self, proto: int, length: int) -> bytes:
        """The pseudo-header a TCP (and an ICMPv6) checksum covers."""
        if self.version == 6:
            return self.src + self.dst + struct.pack("!I3xB", length, proto)
        return self.src + self.dst + struct.pack("!BBH", 0, proto, length)


def _unicast4(address: bytes) -> bool:
    return address != b"\0\0\0\0" and address[0] < 224 and address[0] != 127


def _unicast6(address: bytes) -> bool:
    return address[0] != 0xFF and address not in (bytes(16), bytes(15) + b"\1")


def answer(frame: bytes) -> Answer:
    """The answer to the refused Ethernet frame `frame` (possibly cut short), or why there is
    none."""
    if len(frame) < 14 + 20:
        return Answer("truncated", None)
    eth_dst, eth_src, eth_type = frame[:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0]
    if eth_src[0] & 1:
        return Answer("multicast_source", None)
    head = eth_src + eth_dst + frame[12:14]
    if eth_type == ETH_IPV4:
        return _ipv4(frame[14:], head)
    if eth_type == ETH_IPV6:
        return _ipv6(frame[14:], head)
    return Answer("not_ip", None)


def _ipv4(ip: bytes, head: bytes) -> Answer:
    version_ihl, _, total_len, _, frag, _, proto = struct.unpack_from("!BBHHHBB", ip)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or len(ip) < ihl or total_len < ihl:
        return Answer("malformed", None)
    if frag & 0x1FFF:
        return Answer("fragment", None)  # only the first fragment has the ports
    src, dst = ip[12:16], ip[16:20]
    if not _unicast4(src) or not _unicast4(dst):
        return Answer("not_unicast", None)
    # The payload as far as the packet-in holds it; the IP header's length for what it was.
    return _transport(_Turned(head, dst, src), proto, ip[ihl:total_len], total_len - ihl,
                      ip[:min(total_len, len(ip))])


def _ipv6(ip: bytes, head: bytes) -> Answer:
    if len(ip) < 40:
        return Answer("truncated", None)
    first, payload_len, next_header = struct.unpack_from("!IHB", ip)
    if first >> 28 != 6:
        return Answer("malformed", None)
    src, dst = ip[8:24], ip[24:40]
    if not _unicast6(src) or not _unicast6(dst):
        return Answer("not_unicast", None)
    payload = ip[40:40 + payload_len]
    if next_header == FRAGMENT:
        if len(payload) < 8:
            return Answer("truncated", None)
        if struct.unpack_from("!H", payload, 2)[0] & 0xFFF8:
            return Answer("fragment", None)
    return _transport(_Turned(head, dst, src), next_header, payload, payload_len,
                      ip[:min(40 + payload_len, len(ip))])


def _transport(turned: _Turned, proto: int, payload: bytes, length: int, quote: bytes
               ) -> Answer:
    """The answer to a packet of protocol `proto` whose payload (`length` bytes, of which we
    have `payload`) follows the IP header; `quote` is the packet from its IP header on."""
    version = turned.version
    if proto == TCP:
        return _tcp_reset(turned, payload, length)
    if proto == (ICMPV6 if version == 6 else ICMP) and (
            len(payload) < 1 or payload[0] not in QUERIES[version]):
        return Answer("icmp_not_a_query", None)
    kind, port_code, prohibited_code = UNREACHABLE[version]
    code = port_code if proto == UDP else prohibited_code
    header_len = 40 if version == 6 else 20
    body = struct.pack("!BBHI", kind, code, 0, 0) + quote[:LIMIT[version] - header_len - 8]
    proto_out = ICMPV6 if version == 6 else ICMP
    covered = turned.pseudo(proto_out, len(body)) + body if version == 6 else body
    body = body[:2] + struct.pack("!H", checksum(covered)) + body[4:]
    return Answer("port_unreachable" if proto == UDP else "admin_prohibited",
                  turned.packet(proto_out, body))


def _tcp_reset(turned: _Turned, segment: bytes, seg_total: int) -> Answer:
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
    tcp = tcp[:16] + struct.pack("!H", checksum(turned.pseudo(TCP, len(tcp)) + tcp)) + tcp[18:]
    return Answer("tcp_reset", turned.packet(TCP, tcp))
