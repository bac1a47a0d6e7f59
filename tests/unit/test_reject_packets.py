"""The answers of reject rules (overlay/policy/reject.py), parsed back field by field with
checksums checked, and the untrusted-input side: the builder and the packet-in parser
(overlay/ovs/packetin.py) never raise on any bytes (hypothesis, fixed seed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from overlay.agent.rejects import route_back
from overlay.ovs.flow import Output, SetField
from overlay.ovs.meters import Meter, meter_mod
from overlay.ovs.packetin import Malformed, PacketIn, parse_packet_in
from overlay.policy.reject import LIMIT, answer, checksum

SRC_MAC, DST_MAC = bytes.fromhex("0a580a000002"), bytes.fromhex("0a580a000003")
SRC_IP, DST_IP = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])


def ipv4(proto: int, payload: bytes, *, frag: int = 0, src: bytes = SRC_IP,
         dst: bytes = DST_IP, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 7, frag, 63,
                         proto, 0, src, dst) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def frame(ip: bytes, *, eth_src: bytes = SRC_MAC, eth_type: int = 0x0800) -> bytes:
    return DST_MAC + eth_src + struct.pack("!H", eth_type) + ip


def tcp(flags: int, *, seq: int = 1000, ack: int = 0, data: bytes = b"",
        options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5432, seq, ack, offset << 4, flags, 64240, 0,
                       0) + options + data


def parsed(out: bytes) -> tuple[dict[str, object], bytes]:
    """The answer's Ethernet and IPv4 fields (header checksum checked) and its payload."""
    assert len(out) >= 34
    ip = out[14:]
    v_ihl, tos, total, ident, frag, ttl, proto, _, src, dst = struct.unpack_from(
        "!BBHHHBBH4s4s", ip)
    assert v_ihl == 0x45 and total == len(ip) and checksum(ip[:20]) == 0
    return ({"eth_dst": out[:6], "eth_src": out[6:12], "eth_type": out[12:14], "tos": tos,
             "frag": frag, "ttl": ttl, "proto": proto, "src": src, "dst": dst}, ip[20:])


def assert_turned_around(fields: dict[str, object], proto: int) -> None:
    assert fields == {"eth_dst": SRC_MAC, "eth_src": DST_MAC, "eth_type": b"\x08\x00",
                      "tos": 0, "frag": 0, "ttl": 64, "proto": proto, "src": DST_IP,
                      "dst": SRC_IP}


def tcp_fields(segment: bytes) -> tuple[int, int, int, int, int, int, int]:
    sport, dport, seq, ack, offset, flags, window, _, urgent = struct.unpack("!HHIIBBHHH",
                                                                            segment)
    pseudo = DST_IP + SRC_IP + struct.pack("!BBH", 0, 6, len(segment))
    assert checksum(pseudo + segment) == 0 and offset == 5 << 4 and urgent == 0
    return sport, dport, seq, ack, flags, window, len(segment)


@pytest.mark.parametrize(("flags", "data", "expected_ack"), [
    (0x02, b"", 1001),               # SYN: ack = seq + 1
    (0x02, b"hello", 1006),          # SYN with data (TCP Fast Open): + its length
    (0x03, b"", 1002),               # SYN+FIN: each counts one
    (0x00, b"xyz", 1003),            # no flags, data only
])
def test_a_segment_without_ack_gets_a_reset_that_acknowledges_it(
        flags: int, data: bytes, expected_ack: int) -> None:
    kind, out = answer(frame(ipv4(6, tcp(flags, data=data, options=b"\x02\x04\x05\xb4"))))
    assert kind == "tcp_reset" and out is not None
    fields, segment = parsed(out)
    assert_turned_around(fields, 6)
    assert tcp_fields(segment) == (5432, 40000, 0, expected_ack, 0x14, 0, 20)  # RST+ACK


def test_a_segment_with_ack_gets_a_reset_at_its_ack_number() -> None:
    kind, out = answer(frame(ipv4(6, tcp(0x10, seq=5, ack=0xFFFFFFF0))))
    assert kind == "tcp_reset" and out is not None
    fields, segment = parsed(out)
    assert_turned_around(fields, 6)
    assert tcp_fields(segment) == (5432, 40000, 0xFFFFFFF0, 0, 0x04, 0, 20)  # RST alone


def test_the_acknowledgement_wraps_at_32_bits_and_ip_options_are_skipped() -> None:
    kind, out = answer(frame(ipv4(6, tcp(0x02, seq=0xFFFFFFFF), options=b"\x01" * 4)))
    assert out is not None
    assert tcp_fields(parsed(out)[1])[3] == 0


def icmp(body: bytes) -> tuple[int, int, bytes]:
    assert checksum(body) == 0
    kind, code, _, unused = struct.unpack_from("!BBHI", body)
    assert unused == 0
    return kind, code, body[8:]


@pytest.mark.parametrize(("proto", "payload", "code", "kind"), [
    (17, struct.pack("!HHHH", 40000, 53, 12, 0) + b"quer", 3, "port_unreachable"),
    (1, struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping", 13, "admin_prohibited"),   # echo
    (132, bytes(28), 13, "admin_prohibited"),                                       # SCTP
    (47, bytes(12), 13, "admin_prohibited"),                                        # GRE
])
def test_other_protocols_get_an_unreachable_that_quotes_the_packet(
        proto: int, payload: bytes, code: int, kind: str) -> None:
    refused = ipv4(proto, payload)
    got, out = answer(frame(refused))
    assert got == kind and out is not None
    fields, body = parsed(out)
    assert_turned_around(fields, 1)
    assert icmp(body) == (3, code, refused)


def test_the_quote_stops_at_576_bytes_and_the_ip_header_keeps_its_length() -> None:
    refused = ipv4(17, struct.pack("!HHHH", 40000, 53, 1408, 0) + bytes(1400))
    _, out = answer(frame(refused))
    assert out is not None
    fields, body = parsed(out)
    assert 20 + len(body) == LIMIT[4]
    assert icmp(body)[2] == refused[:LIMIT[4] - 28]


def test_a_packet_cut_short_is_quoted_as_far_as_it_goes() -> None:
    refused = ipv4(17, struct.pack("!HHHH", 40000, 53, 108, 0) + bytes(100))
    _, out = answer(frame(refused)[:14 + 40])
    assert out is not None and icmp(parsed(out)[1])[2] == refused[:40]


@pytest.mark.parametrize(("packet", "reason"), [
    (frame(ipv4(6, tcp(0x04))), "tcp_reset_not_answered"),
    (frame(ipv4(6, tcp(0x14, ack=9))), "tcp_reset_not_answered"),
    (frame(ipv4(1, struct.pack("!BBHI", 3, 3, 0, 0) + bytes(28))), "icmp_not_a_query"),
    (frame(ipv4(1, struct.pack("!BBHI", 0, 0, 0, 0))), "icmp_not_a_query"),       # echo reply
    (frame(ipv4(17, bytes(8), frag=0x2001)), "fragment"),                        # a later one
    (frame(ipv4(17, bytes(8), dst=bytes([255] * 4))), "not_unicast"),
    (frame(ipv4(17, bytes(8), dst=bytes([224, 0, 0, 251]))), "not_unicast"),
    (frame(ipv4(17, bytes(8), src=bytes(4))), "not_unicast"),
    (frame(ipv4(17, bytes(8)), eth_src=bytes.fromhex("010000000001")), "multicast_source"),
    (frame(bytes(28), eth_type=0x0806), "not_ip"),
    (frame(bytes(48), eth_type=0x86DD), "malformed"),  # version 0 in an IPv6 frame
    (frame(ipv4(6, tcp(0x02)))[:14 + 20 + 12], "truncated"),
    (frame(ipv4(6, tcp(0x02)))[:20], "truncated"),
    (frame(b"\x4f" + ipv4(6, tcp(0x02))[1:]), "malformed"),  # a header longer than the packet
    (frame(b"\x65" + ipv4(6, tcp(0x02))[1:]), "malformed"),  # version 6 in an IPv4 frame
])
def test_what_gets_no_answer_and_why(packet: bytes, reason: str) -> None:
    assert answer(packet) == (reason, None)


def test_a_first_fragment_is_answered() -> None:
    assert answer(frame(ipv4(17, bytes(16), frag=0x2000)))[0] == "port_unreachable"


SRC6, DST6 = bytes.fromhex("fd000006" + "0" * 23 + "2"), bytes.fromhex("fd000006" + "0" * 23 + "3")


def ipv6(next_header: int, payload: bytes, *, src: bytes = SRC6, dst: bytes = DST6) -> bytes:
    return struct.pack("!IHBB", 6 << 28 | 0x12345, len(payload), next_header, 61) + src + dst \
        + payload


def parsed6(out: bytes, proto: int) -> bytes:
    """The answer's IPv6 fields checked (turned around, upper-layer checksum); its payload."""
    assert out[:14] == SRC_MAC + DST_MAC + b"\x86\xdd"
    first, length, next_header, hops = struct.unpack_from("!IHBB", out, 14)
    assert (first, length, next_header, hops) == (6 << 28, len(out) - 54, proto, 64)
    assert (out[22:38], out[38:54]) == (DST6, SRC6)
    payload = out[54:]
    assert checksum(DST6 + SRC6 + struct.pack("!I3xB", len(payload), proto) + payload) == 0
    return payload


def test_ipv6_tcp_gets_a_reset() -> None:
    kind, out = answer(frame(ipv6(6, tcp(0x02, seq=41)), eth_type=0x86DD))
    assert kind == "tcp_reset" and out is not None
    sport, dport, seq, ack, offset, flags, window, _, _ = struct.unpack(
        "!HHIIBBHHH", parsed6(out, 6))
    assert (sport, dport, seq, ack, offset, flags, window) == (5432, 40000, 0, 42, 5 << 4,
                                                               0x14, 0)


@pytest.mark.parametrize(("next_header", "payload", "code", "kind"), [
    (17, struct.pack("!HHHH", 40000, 53, 12, 0) + b"quer", 4, "port_unreachable"),
    (58, struct.pack("!BBHHH", 128, 0, 0, 1, 1) + b"ping", 1, "admin_prohibited"),   # echo
    (132, bytes(28), 1, "admin_prohibited"),
    (44, struct.pack("!BBHI", 17, 0, 0x0001, 9) + bytes(16), 1, "admin_prohibited"),  # 1st frag
])
def test_ipv6_other_protocols_get_an_unreachable_that_quotes_the_packet(
        next_header: int, payload: bytes, code: int, kind: str) -> None:
    refused = ipv6(next_header, payload)
    got, out = answer(frame(refused, eth_type=0x86DD))
    assert got == kind and out is not None
    body = parsed6(out, 58)
    icmp_type, icmp_code, _, unused = struct.unpack_from("!BBHI", body)
    assert (icmp_type, icmp_code, unused) == (1, code, 0) and body[8:] == refused


def test_ipv6_quote_stops_at_1280_bytes() -> None:
    refused = ipv6(17, struct.pack("!HHHH", 40000, 53, 1408, 0) + bytes(1400))
    _, out = answer(frame(refused, eth_type=0x86DD))
    assert out is not None and len(out) - 14 == LIMIT[6]
    assert parsed6(out, 58)[8:] == refused[:LIMIT[6] - 48]


@pytest.mark.parametrize(("packet", "reason"), [
    (ipv6(58, struct.pack("!BBHI", 1, 4, 0, 0) + bytes(40)), "icmp_not_a_query"),  # an error
    (ipv6(58, struct.pack("!BBHHH", 129, 0, 0, 1, 1)), "icmp_not_a_query"),        # echo reply
    (ipv6(44, struct.pack("!BBHI", 17, 0, 0x0008, 9) + bytes(16)), "fragment"),    # offset 1
    (ipv6(17, bytes(8), dst=bytes.fromhex("ff02" + "0" * 27 + "1")), "not_unicast"),
    (ipv6(17, bytes(8), src=bytes(16)), "not_unicast"),
    (ipv6(6, tcp(0x04)), "tcp_reset_not_answered"),
    (ipv6(44, bytes(4)), "truncated"),
    (ipv6(6, tcp(0x02))[:39], "truncated"),
])
def test_what_ipv6_gets_no_answer_for(packet: bytes, reason: str) -> None:
    assert answer(frame(packet, eth_type=0x86DD)) == (reason, None)


@seed(20)
@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from([frame(ipv4(6, tcp(0x02))), frame(ipv4(17, bytes(8))),
                                            frame(ipv4(1, b"\x08" + bytes(7))),
                                            frame(ipv6(6, tcp(0x02)), eth_type=0x86DD),
                                            frame(ipv6(58, b"\x80" + bytes(7)),
                                                  eth_type=0x86DD)]),
                           st.integers(0, 59), st.binary(min_size=1, max_size=4))
                 .map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])))
def test_any_bytes_get_an_answer_that_parses_or_a_reason_never_an_exception(data: bytes) -> None:
    kind, out = answer(data)
    if out is not None:
        assert out[:12] == data[6:12] + data[:6] and out[12:14] == data[12:14]
        if out[12:14] == b"\x08\x00":
            parsed(out)  # the IPv4 header and its checksum
        assert len(out) <= 14 + LIMIT[6]
    else:
        assert kind


def packet_in(match_oxms: bytes, data: bytes, *, table: int = 90, reason: int = 1) -> bytes:
    match = struct.pack("!HH", 1, 4 + len(match_oxms)) + match_oxms
    match += bytes(-len(match) % 8)
    return struct.pack("!IHBBQ", 0xFFFFFFFF, len(data), reason, table, 7) + match + bytes(2) \
        + data


IN_PORT_5 = struct.pack("!HBBI", 0x8000, 0 << 1, 4, 5)
TUNNEL = struct.pack("!HBB4s", 0x0001, 31 << 1, 4, bytes([172, 31, 0, 2])) \
    + struct.pack("!HBBQ", 0x8000, 38 << 1, 8, 42)


def test_a_packet_in_gives_its_port_tunnel_and_bytes() -> None:
    reg0 = struct.pack("!HBBI", 0x0001, 0, 4, 42)
    pin = parse_packet_in(packet_in(IN_PORT_5 + reg0 + TUNNEL, b"frame"))
    assert pin == PacketIn(table=90, reason=1, cookie=7, in_port=5, tun_src="172.31.0.2",
                           tun_id=42, data=b"frame", total_len=5)
    assert route_back(pin) == (SetField("tun_dst", "172.31.0.2"), SetField("tun_id", 42),
                               Output(5))
    local = parse_packet_in(packet_in(IN_PORT_5, b"frame"))
    assert local.tun_src is None and route_back(local) == (Output(5),)
    reserved = parse_packet_in(packet_in(struct.pack("!HBBI", 0x8000, 0, 4, 0xFFFFFFFE), b""))
    assert route_back(reserved) is None


@pytest.mark.parametrize("body", [
    b"", bytes(19), packet_in(b"", b"x"),                         # no in_port
    packet_in(IN_PORT_5, b"x")[:24],                              # match cut short
    packet_in(struct.pack("!HBB", 0x8000, 0, 40) + bytes(4), b""),  # an OXM past the match
])
def test_a_packet_in_that_cannot_be_read_is_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        parse_packet_in(body)


@seed(20)
@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.tuples(st.integers(0, 60), st.binary(min_size=1, max_size=6))
                 .map(lambda t: (lambda b: b[:t[0]] + t[1] + b[t[0] + len(t[1]):])(
                     packet_in(IN_PORT_5 + TUNNEL, b"0123456789")))))
def test_any_packet_in_body_parses_or_is_malformed(body: bytes) -> None:
    try:
        pin = parse_packet_in(body)
    except Malformed:
        return
    assert route_back(pin) is None or pin.in_port < 0xFFFFFF00


def test_a_meter_mod_has_one_drop_band_in_packets() -> None:
    data = meter_mod(0, Meter(20, 100, 50), xid=9)
    assert data == bytes.fromhex("051d0020" "00000009" "0000" "000e" "00000014"
                                 "0001" "0010" "00000064" "00000032" "00000000")
