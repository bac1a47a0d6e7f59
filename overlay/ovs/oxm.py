"""OXM match fields for the flow mods of ofencode.py: the field table, the order in which
ovs-vswitchd reports a rule's fields (_RANK), and the encoders of one field and of a whole match.

What is here is the part of the encoding that knows about match fields only; the actions and the
per-bundle Encoder that memoizes across rules are in ofencode.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections.abc import Callable

from overlay.ovs.flow import CT_FLAGS, Match, Value


class Unsupported(Exception):
    """A rule this encoder does not know how to say: send it with ovs-ofctl instead."""


# --- fields: (class, field, length) --------------------------------------------------------

BASIC, NXM0, NXM1 = 0x8000, 0x0000, 0x0001
IN_PORT_F = (BASIC, 0, 4)
ETH_DST, ETH_SRC, ETH_TYPE = (BASIC, 3, 6), (BASIC, 4, 6), (BASIC, 5, 2)
IP_PROTO, IPV4_SRC, IPV4_DST = (BASIC, 10, 1), (BASIC, 11, 4), (BASIC, 12, 4)
UDP_SRC, UDP_DST = (BASIC, 15, 2), (BASIC, 16, 2)
ARP_OP, ARP_SPA, ARP_TPA, ARP_SHA = (BASIC, 21, 2), (BASIC, 22, 4), (BASIC, 23, 4), (BASIC, 24, 6)
IPV6_SRC, ICMPV6_TYPE, TUNNEL_ID = (BASIC, 26, 16), (BASIC, 29, 1), (BASIC, 38, 8)
IPV6_DST, ICMPV6_CODE, ND_TARGET = (BASIC, 27, 16), (BASIC, 30, 1), (BASIC, 31, 16)
ND_SLL, ND_TLL = (BASIC, 32, 6), (BASIC, 33, 6)
REG0, REG1, TUN_SRC, TUN_DST = (NXM1, 0, 4), (NXM1, 1, 4), (NXM1, 31, 4), (NXM1, 32, 4)
TCP_SRC, TCP_DST, SCTP_DST = (BASIC, 13, 2), (BASIC, 14, 2), (BASIC, 18, 2)
CONJ_ID, CT_STATE, CT_ZONE = (NXM1, 37, 4), (NXM1, 105, 4), (NXM1, 106, 2)
NXM_ETH_DST, NXM_ETH_SRC = (NXM0, 1, 6), (NXM0, 2, 6)
NXM_ARP_SPA, NXM_ARP_TPA = (NXM0, 16, 4), (NXM0, 17, 4)
NXM_ARP_SHA, NXM_ARP_THA = (NXM1, 17, 6), (NXM1, 18, 6)
NXM_ARP_OP = (NXM0, 15, 2)  # what ovs-ofctl writes for NXM_OF_ARP_OP[], and the switch shows back
Field = tuple[int, int, int]

# Protocol keywords: what they put into the match (eth_type, ip_proto).

# Match fields by their names in flow.FIELDS.
_MATCH: dict[str, Field] = {
    "in_port": IN_PORT_F, "reg0": REG0, "reg1": REG1, "eth_src": ETH_SRC, "eth_dst": ETH_DST,
    "tun_src": TUN_SRC, "tun_dst": TUN_DST, "tun_id": TUNNEL_ID, "eth_type": ETH_TYPE,
    "ip_proto": IP_PROTO, "ipv4_src": IPV4_SRC, "ipv4_dst": IPV4_DST, "ipv6_src": IPV6_SRC,
    "ipv6_dst": IPV6_DST, "tp_src": UDP_SRC, "tp_dst": UDP_DST,  # tp_*: with udp only
    "icmp_type": ICMPV6_TYPE, "icmp_code": ICMPV6_CODE,  # icmp_*: with icmp6 only
    "nd_target": ND_TARGET, "nd_sll": ND_SLL, "nd_tll": ND_TLL, "arp_op": ARP_OP,
    "arp_spa": ARP_SPA, "arp_tpa": ARP_TPA, "arp_sha": ARP_SHA,
    "conj_id": CONJ_ID, "ct_state": CT_STATE, "ct_zone": CT_ZONE, "tcp_dst": TCP_DST,
    "sctp_dst": SCTP_DST,
}
# Match fields whose values are per endpoint: not worth remembering across the rules of a bundle.
_UNIQUE = frozenset({"eth_src", "eth_dst", "ipv4_src", "arp_spa", "arp_tpa", "arp_sha",
                     "ipv6_src"})
_IPV4_FIELDS = (IPV4_SRC, IPV4_DST, ARP_SPA, ARP_TPA, TUN_SRC, TUN_DST)


def _mac(text: str) -> bytes:
    value = bytes.fromhex(text.replace(":", ""))
    if len(value) != 6:
        raise ValueError(f"bad MAC {text!r}")
    return value


def _ipv4(text: str) -> bytes:
    # inet_pton, not ipaddress: a restart encodes 100,000 rules, and ipaddress's parsing was a
    # third of that. Both refuse the same malformed addresses.
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise ValueError(f"bad IPv4 address {text!r}") from None


def ct_state_bits(text: str) -> tuple[int, int]:
    """"+trk+est-inv" -> (value, mask): the flags named are matched, set (+) or not (-)."""
    value = mask = 0
    for sign, name in re.findall(r"([+-])([a-z]+)", text):
        bit = CT_FLAGS.get(name)
        if bit is None:
            raise ValueError(f"ct_state flag {name!r}")
        mask |= bit
        value |= bit if sign == "+" else 0
    if not mask or re.sub(r"[+-][a-z]+", "", text):
        raise ValueError(f"bad ct_state {text!r}")
    return value, mask


def _value(field: Field, value: Value) -> tuple[bytes, bytes | None]:
    """Encode a field's value (and mask, for prefixes and masked MACs and ports). Raises
    ValueError for a malformed one."""
    length = field[2]
    if isinstance(value, int):
        return value.to_bytes(length, "big"), None
    if field == CT_STATE:
        bits, mask_bits = ct_state_bits(value)
        return bits.to_bytes(4, "big"), mask_bits.to_bytes(4, "big")
    if field in (TCP_DST, UDP_DST, SCTP_DST):  # "0x50/0xfff0"
        port, _, port_mask = value.partition("/")
        bits = int(port_mask or "0xffff", 0)
        return int(port, 0).to_bytes(2, "big"), None if bits == 0xFFFF else bits.to_bytes(2, "big")
    address, _, mask = value.partition("/")
    if length == 6:
        return _mac(address), (_mac(mask) if mask else None)
    if length == 16:
        net = ipaddress.IPv6Network(value, strict=False)
        full = net.prefixlen == 128 and not mask
        return net.network_address.packed, (None if full else net.netmask.packed)
    if field in _IPV4_FIELDS and not mask:
        return _ipv4(address), None
    if field in (IPV4_SRC, IPV4_DST):  # a prefix: policy's CIDR peers
        net4 = ipaddress.IPv4Network(value, strict=False)
        return net4.network_address.packed, (None if net4.prefixlen == 32 else
                                              net4.netmask.packed)
    raise Unsupported(f"value {value!r}")


def _oxm(field: Field, value: bytes, mask: bytes | None = None) -> bytes:
    cls, num, length = field
    if mask is None:
        return struct.pack("!HBB", cls, num << 1, length) + value
    return struct.pack("!HBB", cls, (num << 1) | 1, 2 * length) + value + mask


# The order in which ovs-vswitchd writes a rule's match fields when it reports the rule
# (nx_put_raw): prerequisites first, registers last. Matches are encoded in this order, so a
# rule we send and the same rule dumped from the switch are the same bytes (Channel.digests:
# a restarted agent compares its table with the switch's without decoding either).
# Checked against lib/nx-match.c (nx_put_raw, nxm_put_ip): IPv6 source, destination, ip_proto,
# then ICMPv6 type, code, nd_target, nd_sll (written only when type is 135) and nd_tll (136);
# tests/integration/test_openflow_channel.py compares a dump of every kind of rule with ours.
# conj_id is metadata and comes first; conntrack comes after the registers.
_RANK: dict[Field, int] = {field: rank for rank, field in enumerate((
    CONJ_ID, IN_PORT_F, ETH_SRC, ETH_DST, ETH_TYPE, IPV4_SRC, IPV4_DST, IPV6_SRC, IPV6_DST,
    IP_PROTO, TCP_SRC, TCP_DST, UDP_SRC, UDP_DST, SCTP_DST, ICMPV6_TYPE, ICMPV6_CODE, ND_TARGET,
    ND_SLL, ND_TLL, ARP_OP, ARP_SPA, ARP_TPA, ARP_SHA, TUNNEL_ID, TUN_SRC, TUN_DST, REG0, REG1,
    CT_STATE, CT_ZONE))}
_UDP_PORTS = (_RANK[UDP_SRC], _RANK[UDP_DST])
_UDP_PROTO = _oxm(IP_PROTO, bytes([17]))

# A match field encoded: (its rank in the switch's order, its OXM).
Encoded = tuple[int, bytes]


def _field(name: str | Value, value: str | Value) -> Encoded:
    field = _MATCH.get(str(name))
    if field is None:
        raise Unsupported(f"match field {name!r}")
    if isinstance(value, int) and not 0 <= value < 1 << (8 * field[2]):
        raise Unsupported(f"match {name}={value}: out of range")
    try:
        return _RANK[field], _oxm(field, *_value(field, value))
    except ValueError as exc:
        raise Unsupported(f"match {name}={value!r}: {exc}") from None


def _fast_mac(field: Field) -> Callable[[str], bytes]:
    header = struct.pack("!HBB", field[0], field[1] << 1, 6)
    return lambda text: header + _mac(text)


def _fast_ipv4(field: Field) -> Callable[[str], bytes]:
    header = struct.pack("!HBB", field[0], field[1] << 1, 4)
    return lambda text: header + _ipv4(text)


# The per-endpoint match fields without a mask, straight to their OXM: what most rules of a
# big table end with (eth_dst of a forwarding rule, arp_tpa of an ARP answer).
_FAST: dict[str | Value, Callable[[str], bytes]] = {
    "eth_dst": _fast_mac(ETH_DST), "eth_src": _fast_mac(ETH_SRC), "arp_sha": _fast_mac(ARP_SHA),
    "arp_tpa": _fast_ipv4(ARP_TPA), "arp_spa": _fast_ipv4(ARP_SPA),
    "ipv4_src": _fast_ipv4(IPV4_SRC),
}


def _fields(pairs: tuple[str | Value, ...],
            memo: dict[tuple[str | Value, str | Value], Encoded] | None = None
            ) -> list[Encoded]:
    """The (rank, OXM) of every field a match sets, in the switch's order."""
    fields: list[Encoded] = []
    for i in range(0, len(pairs), 2):
        pair = (pairs[i], pairs[i + 1])
        encoded = memo.get(pair) if memo is not None else None
        if encoded is None:
            encoded = _field(*pair)
            if memo is not None and pair[0] not in _UNIQUE:
                memo[pair] = encoded
        fields.append(encoded)
    fields.sort()
    return fields


def _udp_checked(fields: list[Encoded]) -> list[Encoded]:
    """flows.py matches tp_src/tp_dst with udp only, and so does this encoder."""
    if any(rank in _UDP_PORTS for rank, _ in fields) and \
            not any(oxm == _UDP_PROTO for _, oxm in fields):
        raise Unsupported("tp_src/tp_dst other than UDP")
    return fields


def _match(oxms: bytes) -> bytes:
    length = 4 + len(oxms)
    return struct.pack("!HH", 1, length) + oxms + b"\0" * (-length % 8)


def encode_match(m: Match) -> bytes:
    """A match, field by field, nothing remembered: the reference for the Encoder."""
    return _match(b"".join(oxm for _, oxm in _udp_checked(_fields(m))))
