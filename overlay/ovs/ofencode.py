"""OpenFlow 1.4 flow mods from the rule text flows.py writes, byte for byte as ovs-ofctl sends them.

It encodes only that vocabulary (the matches in _MATCH, the actions in _action); anything else
raises Unsupported and the caller goes through ovs-ofctl, which understands everything.
tests/integration/test_openflow_channel.py installs the whole table both ways and compares.

Speed matters here once per restart: the whole table (100,000 rules at 50,000 remote endpoints)
is encoded while ovs-vswitchd waits for it, and that was 2.5 s of the 9 s a restart took. So an
`Encoder` lives for one bundle and memoizes what repeats across its rules: the tokens of a match
that are not addresses (`reg0=42`, `arp`, `arp_op=1`: a table's worth of rules share a handful),
the fixed part of a flow mod (table, command, priority, cookie), and whole instruction lists
(every endpoint of a host forwards the same way). What is unique per rule (a MAC, an address)
is cheap to encode directly. The ARP responder's actions, 240 characters that differ only in a
MAC and an address, are accepted in the short form the flow table holds them in
(`@arp_reply:<mac>,<ip>`, see flows.actions_text) and built from a template, without being
expanded to text and parsed back.

Match fields are written in the order ovs-vswitchd reports them, so that a rule's bytes here
and in a dump of the switch are the same (`Encoder.key`, `Channel.holds_exactly`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from collections.abc import Callable

VERSION = 0x05  # OpenFlow 1.4
FLOW_MOD = 14
COMMANDS = {"add": 0, "modify_strict": 2, "delete_strict": 4}
NO_BUFFER = ANY = 0xFFFFFFFF
IN_PORT = 0xFFFFFFF8
NX_VENDOR, NXAST_REG_MOVE, NXAST_REG_LOAD, NXAST_RESUBMIT_TABLE = 0x00002320, 6, 7, 14
OFPP_IN_PORT_16 = 0xFFF8  # resubmit's in_port is 16 bits wide: "keep the packet's in_port"
DELETE, ALL_TABLES = 3, 0xFF
ARP_REPLY_SHORT = "@arp_reply:"  # flows.py's short form of the ARP responder's actions


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
REG0, TUN_SRC, TUN_DST = (NXM1, 0, 4), (NXM1, 31, 4), (NXM1, 32, 4)
NXM_ETH_DST, NXM_ETH_SRC = (NXM0, 1, 6), (NXM0, 2, 6)
NXM_ARP_SPA, NXM_ARP_TPA = (NXM0, 16, 4), (NXM0, 17, 4)
NXM_ARP_SHA, NXM_ARP_THA = (NXM1, 17, 6), (NXM1, 18, 6)
NXM_ARP_OP = (NXM0, 15, 2)  # what ovs-ofctl writes for NXM_OF_ARP_OP[], and the switch shows back
Field = tuple[int, int, int]

# Protocol keywords: what they put into the match (eth_type, ip_proto).
_KEYWORDS = {"ip": (0x0800, None), "arp": (0x0806, None), "ipv6": (0x86DD, None),
             "icmp6": (0x86DD, 58), "udp": (0x0800, 17), "udp6": (0x86DD, 17)}
_MATCH: dict[str, Field] = {
    "in_port": IN_PORT_F, "dl_src": ETH_SRC, "dl_dst": ETH_DST, "nw_src": IPV4_SRC,
    "nw_dst": IPV4_DST, "tp_src": UDP_SRC, "tp_dst": UDP_DST,  # tp_*: flows.py uses them with udp only
    "arp_op": ARP_OP, "arp_spa": ARP_SPA, "arp_tpa": ARP_TPA, "arp_sha": ARP_SHA,
    "ipv6_src": IPV6_SRC, "icmp_type": ICMPV6_TYPE, "tun_src": TUN_SRC, "tun_id": TUNNEL_ID,
    "reg0": REG0,
    # Neighbour discovery (flows.py matches icmp_* with icmp6 only): container ports' table 0.
    "ipv6_dst": IPV6_DST, "icmp_code": ICMPV6_CODE, "nd_target": ND_TARGET, "nd_sll": ND_SLL,
    "nd_tll": ND_TLL,
}
# Match keys whose values are per endpoint: not worth remembering across the rules of a bundle.
_UNIQUE = frozenset({"dl_src", "dl_dst", "nw_src", "arp_spa", "arp_tpa", "arp_sha", "ipv6_src"})
_IPV4_FIELDS = (IPV4_SRC, IPV4_DST, ARP_SPA, ARP_TPA, TUN_SRC, TUN_DST)
_SET_FIELD = {"tun_dst": TUN_DST, "tun_id": TUNNEL_ID, "arp_sha": ARP_SHA, "arp_spa": ARP_SPA}
_NXM = {"NXM_NX_REG0[]": REG0, "NXM_OF_ETH_SRC[]": NXM_ETH_SRC, "NXM_OF_ETH_DST[]": NXM_ETH_DST,
        "NXM_NX_ARP_SHA[]": NXM_ARP_SHA, "NXM_NX_ARP_THA[]": NXM_ARP_THA,
        "NXM_OF_ARP_SPA[]": NXM_ARP_SPA, "NXM_OF_ARP_TPA[]": NXM_ARP_TPA,
        "NXM_OF_ARP_OP[]": NXM_ARP_OP}


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


def _value(field: Field, text: str) -> tuple[bytes, bytes | None]:
    """Encode a field's value (and mask, for prefixes and masked MACs)."""
    length = field[2]
    value, _, mask = text.partition("/")
    if length == 6:
        return _mac(value), (_mac(mask) if mask else None)
    if length == 16:
        net = ipaddress.IPv6Network(text, strict=False)
        full = net.prefixlen == 128 and not mask
        return net.network_address.packed, (None if full else net.netmask.packed)
    if field in _IPV4_FIELDS and "." in value:
        if mask:
            raise Unsupported(f"masked {text}")
        return _ipv4(value), None
    if mask:
        raise Unsupported(f"masked {text}")
    return int(value, 0).to_bytes(length, "big"), None


def _oxm(field: Field, value: bytes, mask: bytes | None = None) -> bytes:
    cls, num, length = field
    if mask is None:
        return struct.pack("!HBB", cls, num << 1, length) + value
    return struct.pack("!HBB", cls, (num << 1) | 1, 2 * length) + value + mask


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


# The order in which ovs-vswitchd writes a rule's match fields when it reports the rule
# (nx_put_raw): prerequisites first, registers last. Matches are encoded in this order, so a
# rule we send and the same rule dumped from the switch are the same bytes (Channel.digests:
# a restarted agent compares its table with the switch's without decoding either).
# Checked against lib/nx-match.c (nx_put_raw, nxm_put_ip): IPv6 source, destination, ip_proto,
# then ICMPv6 type, code, nd_target, nd_sll (written only when type is 135) and nd_tll (136);
# tests/integration/test_openflow_channel.py compares a dump of every kind of rule with ours.
_RANK: dict[Field, int] = {field: rank for rank, field in enumerate((
    IN_PORT_F, ETH_SRC, ETH_DST, ETH_TYPE, IPV4_SRC, IPV4_DST, IPV6_SRC, IPV6_DST, IP_PROTO,
    UDP_SRC, UDP_DST, ICMPV6_TYPE, ICMPV6_CODE, ND_TARGET, ND_SLL, ND_TLL, ARP_OP, ARP_SPA,
    ARP_TPA, ARP_SHA, TUNNEL_ID, TUN_SRC, TUN_DST, REG0))}
_UDP_PORTS = (_RANK[UDP_SRC], _RANK[UDP_DST])
_UDP_PROTO = _oxm(IP_PROTO, bytes([17]))

# A match token encoded: its fields as (rank, OXM) and, for a protocol keyword, its ip_proto.
Token = tuple[tuple[tuple[int, bytes], ...], int | None]


def _token(token: str) -> Token:
    if token in _KEYWORDS:
        eth_type, ip_proto = _KEYWORDS[token]
        fields = [(_RANK[ETH_TYPE], _oxm(ETH_TYPE, eth_type.to_bytes(2, "big")))]
        if ip_proto is not None:
            fields.append((_RANK[IP_PROTO], _oxm(IP_PROTO, bytes([ip_proto]))))
        return tuple(fields), ip_proto
    key, sep, text = token.partition("=")
    if not sep or key not in _MATCH:
        raise Unsupported(f"match {token!r}")
    field = _MATCH[key]
    return ((_RANK[field], _oxm(field, *_value(field, text))),), None


def _fast_mac(field: Field) -> Callable[[str], bytes]:
    header = struct.pack("!HBB", field[0], field[1] << 1, 6)
    return lambda text: header + _mac(text)


def _fast_ipv4(field: Field) -> Callable[[str], bytes]:
    header = struct.pack("!HBB", field[0], field[1] << 1, 4)
    return lambda text: header + _ipv4(text)


# The per-endpoint match fields without a mask, straight to their OXM: what most rules of a
# big table end with (dl_dst=<mac> of a forwarding rule, arp_tpa=<ip> of an ARP answer).
_FAST: dict[str, Callable[[str], bytes]] = {
    "dl_dst": _fast_mac(ETH_DST), "dl_src": _fast_mac(ETH_SRC), "arp_sha": _fast_mac(ARP_SHA),
    "arp_tpa": _fast_ipv4(ARP_TPA), "arp_spa": _fast_ipv4(ARP_SPA), "nw_src": _fast_ipv4(IPV4_SRC),
}


def _sized(action_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    length += -length % 8
    return struct.pack("!HH", action_type, length) + payload + b"\0" * (length - 4 - len(payload))


def _output(port: int) -> bytes:
    return struct.pack("!HHIH6x", 0, 16, port, 0xFFFF)


def _nxm_header(field: Field) -> int:
    return (field[0] << 16) | (field[1] << 9) | field[2]


def _move(src: Field, dst: Field) -> bytes:
    return struct.pack("!HHIHHHHII", 0xFFFF, 24, NX_VENDOR, NXAST_REG_MOVE, src[2] * 8, 0, 0,
                       _nxm_header(src), _nxm_header(dst))


def _load(field: Field, value: int) -> bytes:
    # ovs-ofctl sends "load:" as Nicira reg_load (and the switch shows it back as "load:"), so
    # do the same: a rule sent either way is then the same rule in the switch.
    ofs_nbits = field[2] * 8 - 1  # offset 0, all bits
    return struct.pack("!HHIHHIQ", 0xFFFF, 24, NX_VENDOR, NXAST_REG_LOAD, ofs_nbits,
                       _nxm_header(field), value)


def _set_field_action(field: Field, value: bytes) -> bytes:
    return _sized(25, _oxm(field, value))


def _action(token: str) -> tuple[bytes, int | None]:
    """One action: (bytes for apply_actions, or goto_table's table)."""
    if token.startswith("goto_table:"):
        return b"", int(token[11:])
    if token == "IN_PORT":
        return _output(IN_PORT), None
    if token.startswith("output:"):
        return _output(int(token[7:])), None
    if token.startswith("mod_dl_src:"):
        return _set_field_action(ETH_SRC, _value(ETH_SRC, token[11:])[0]), None
    if token.startswith("set_field:"):
        value, _, name = token[10:].partition("->")
        if name not in _SET_FIELD:
            raise Unsupported(f"action {token!r}")
        return _set_field_action(_SET_FIELD[name], _value(_SET_FIELD[name], value)[0]), None
    if token.startswith("load:"):
        value, _, target = token[5:].partition("->")
        if target not in ("NXM_NX_REG0[]", "NXM_OF_ARP_OP[]"):
            raise Unsupported(f"action {token!r}")
        return _load(_NXM[target], int(value, 0)), None
    if token.startswith("resubmit(,") and token.endswith(")"):
        # ovs-ofctl sends resubmit(,T) as Nicira resubmit_table with in_port IN_PORT.
        return struct.pack("!HHIHHB3x", 0xFFFF, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE,
                           OFPP_IN_PORT_16, int(token[10:-1])), None
    if token.startswith("move:"):
        src, _, dst = token[5:].partition("->")
        if src not in _NXM or dst not in _NXM or _NXM[src][2] != _NXM[dst][2]:
            raise Unsupported(f"action {token!r}")
        return _move(_NXM[src], _NXM[dst]), None
    raise Unsupported(f"action {token!r}")


_ACTION_SPLIT = re.compile(r",(?![^(]*\))")


def encode_actions_generic(actions: str) -> bytes:
    """Instructions from action text, token by token: the reference for the shortcuts."""
    if actions == "drop":
        return b""
    applied, goto = b"", None
    # Commas inside parentheses belong to the action: resubmit(,41).
    tokens = actions.split(",") if "(" not in actions else _ACTION_SPLIT.split(actions)
    for token in tokens:
        data, table = _action(token)
        applied += data
        if table is not None:
            goto = table
    out = b""
    if applied:
        out += struct.pack("!HH4x", 4, 8 + len(applied)) + applied
    if goto is not None:
        out += struct.pack("!HHB3x", 1, 8, goto)
    return out


# The ARP responder (flows._arp_reply_text): the same bytes for every endpoint but for its MAC
# (twice) and address, which sit at fixed offsets. So: constant pieces around them.
_ARP_TEXT = re.compile(
    r"move:NXM_OF_ETH_SRC\[\]->NXM_OF_ETH_DST\[\],mod_dl_src:([0-9a-f:]{17}),"
    r"load:0x2->NXM_OF_ARP_OP\[\],move:NXM_NX_ARP_SHA\[\]->NXM_NX_ARP_THA\[\],"
    r"move:NXM_OF_ARP_SPA\[\]->NXM_OF_ARP_TPA\[\],set_field:([0-9a-f:]{17})->arp_sha,"
    r"set_field:([0-9.]+)->arp_spa,IN_PORT")
_ARP_SET_ETH_SRC = struct.pack("!HHHBB", 25, 16, BASIC, ETH_SRC[1] << 1, 6)   # + MAC, 2 pad
_ARP_SET_SHA = struct.pack("!HHHBB", 25, 16, BASIC, ARP_SHA[1] << 1, 6)       # + MAC, 2 pad
_ARP_SET_SPA = struct.pack("!HHHBB", 25, 16, BASIC, ARP_SPA[1] << 1, 4)       # + IP, 4 pad
_ARP_APPLIED = (len(_move(NXM_ETH_SRC, NXM_ETH_DST)) + 16 + len(_load(NXM_ARP_OP, 2))
                + 2 * len(_move(NXM_ARP_SHA, NXM_ARP_THA)) + 16 + 16 + len(_output(IN_PORT)))
_ARP_HEAD = struct.pack("!HH4x", 4, 8 + _ARP_APPLIED) + _move(NXM_ETH_SRC, NXM_ETH_DST) \
    + _ARP_SET_ETH_SRC
_ARP_MIDDLE = (b"\0\0" + _load(NXM_ARP_OP, 2) + _move(NXM_ARP_SHA, NXM_ARP_THA)
               + _move(NXM_ARP_SPA, NXM_ARP_TPA) + _ARP_SET_SHA)
_ARP_TAIL = b"\0\0" + _ARP_SET_SPA
_ARP_END = b"\0" * 4 + _output(IN_PORT)


def arp_reply(mac: bytes, ip: bytes) -> bytes:
    """The ARP responder's instructions for one MAC and IPv4 address."""
    return _ARP_HEAD + mac + _ARP_MIDDLE + mac + _ARP_TAIL + ip + _ARP_END


def encode_instructions(actions: str) -> bytes:
    """Instructions from actions as flows.py writes them, or in the flow table's short form."""
    if actions.startswith(ARP_REPLY_SHORT):
        mac, _, ip = actions[len(ARP_REPLY_SHORT):].partition(",")
        try:
            return arp_reply(_mac(mac), _ipv4(ip))
        except ValueError as exc:
            raise Unsupported(f"ARP reply {actions!r}: {exc}") from None
    if actions.startswith("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:"):
        found = _ARP_TEXT.fullmatch(actions)
        if found and found[1] == found[2]:
            try:
                return arp_reply(_mac(found[1]), _ipv4(found[3]))
            except ValueError:
                pass  # the general path says what is wrong with it
    return encode_actions_generic(actions)


def _fields(tokens: list[str], memo: dict[str, Token] | None = None
            ) -> list[tuple[int, bytes]]:
    """The (rank, OXM) of every field the tokens match, in the switch's order."""
    fields: list[tuple[int, bytes]] = []
    for token in tokens:
        encoded = memo.get(token) if memo is not None else None
        if encoded is None:
            encoded = _token(token)
            if memo is not None and token.partition("=")[0] not in _UNIQUE:
                memo[token] = encoded
        fields += encoded[0]
    fields.sort()
    return fields


def _udp_checked(fields: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """flows.py matches tp_src/tp_dst with udp only, and so does this encoder."""
    if any(rank in _UDP_PORTS for rank, _ in fields) and \
            not any(oxm == _UDP_PROTO for _, oxm in fields):
        raise Unsupported("tp_src/tp_dst other than UDP")
    return fields


def _match(oxms: bytes) -> bytes:
    length = 4 + len(oxms)
    return struct.pack("!HH", 1, length) + oxms + b"\0" * (-length % 8)


def encode_match(tokens: list[str]) -> bytes:
    return _match(b"".join(oxm for _, oxm in _udp_checked(_fields(tokens))))


# What an Encoder keeps of a stem: the flow mod's body (table, priority, cookie), the table and
# priority, and the stem's match fields as (rank, OXM) in the switch's order.
Stem = tuple[bytes, int, int, list[tuple[int, bytes]]]
RuleKey = tuple[int, int, bytes]  # (table, priority, match + instructions): a rule's content


class Encoder:
    """Flow mods for one bundle, remembering what repeats across its rules (see the top).

    A rule's identity but its last token (`table=20,priority=100,reg0=42` of
    `...,dl_dst=<mac>`) is its stem: the rules of one kind in one network share it, so its
    flow mod body and match fields are encoded once; only the last token is encoded per rule,
    and slotted in among the stem's fields where the switch's order puts it.
    """

    def __init__(self, cookie: int) -> None:
        self._cookie = cookie
        self._tokens: dict[str, Token] = {}
        self._instructions: dict[str, bytes] = {}  # actions -> instructions, except ARP replies
        self._stems: dict[tuple[str, str], Stem] = {}
        self._around: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}  # fields before, after

    def flow_mod(self, kind: str, identity: str, actions: str, xid: int) -> bytes:
        body, _, _, match, instructions = self._encode(kind, identity, actions)
        length = 8 + len(body) + len(match) + len(instructions)
        return struct.pack("!BBHI", VERSION, FLOW_MOD, length, xid) + body + match + instructions

    def key(self, identity: str, actions: str) -> RuleKey:
        """What the switch reports of this rule once added (Channel.table_keys), cookie aside."""
        _, table, priority, match, instructions = self._encode("add", identity, actions)
        return table, priority, match + instructions

    def _encode(self, kind: str, identity: str, actions: str
                ) -> tuple[bytes, int, int, bytes, bytes]:
        stem, _, last = identity.rpartition(",")
        if last.startswith("priority="):  # no match at all: the stem is the whole identity
            stem, last = identity, ""
        shared = self._stems.get((kind, stem))
        if shared is None:
            shared = self._stems[(kind, stem)] = self._stem(kind, stem, identity)
        body, table, priority, fields = shared
        key, _, text = last.partition("=")
        fast = _FAST.get(key)
        if fast is not None and "/" not in text:
            # The common case: the stem's match and one per-endpoint field among its fields.
            around = self._around.get((kind, stem, key))
            if around is None:
                _udp_checked(fields)
                rank = _RANK[_MATCH[key]]
                around = self._around[(kind, stem, key)] = (
                    b"".join(oxm for r, oxm in fields if r < rank),
                    b"".join(oxm for r, oxm in fields if r > rank))
            try:
                match = _match(around[0] + fast(text) + around[1])
            except ValueError as exc:
                raise Unsupported(f"match {last!r}: {exc}") from None
        else:
            extra = _fields([last], self._tokens) if last else []
            match = _match(b"".join(oxm for _, oxm in _udp_checked(sorted(fields + extra))))
        if kind == "delete_strict":
            instructions = b""
        elif actions.startswith(ARP_REPLY_SHORT):  # unique per endpoint: not remembered
            instructions = encode_instructions(actions)
        else:
            known = self._instructions.get(actions)
            if known is None:
                known = self._instructions[actions] = encode_instructions(actions)
            instructions = known
        return body, table, priority, match, instructions

    def _stem(self, kind: str, stem: str, identity: str) -> Stem:
        tokens = identity.split(",")
        if len(tokens) < 2 or not (tokens[0].startswith("table=")
                                   and tokens[1].startswith("priority=")):
            raise Unsupported(f"identity {identity!r}")
        table, priority = int(tokens[0][6:]), int(tokens[1][9:])
        body = struct.pack("!QQBBHHHIIIHH", self._cookie if kind == "add" else 0, 0, table,
                           COMMANDS[kind], 0, 0, priority, NO_BUFFER, ANY, ANY, 0, 0)
        # The stem alone is not checked for UDP ports (its last token may be "udp").
        return body, table, priority, _fields(tokens[2:len(stem.split(","))], self._tokens)


def encode_delete_cookie(cookie: int, xid: int) -> bytes:
    """Delete, in every table, the rules whose cookie is exactly `cookie`."""
    match = _pad8(struct.pack("!HH", 1, 4))
    body = struct.pack("!QQBBHHHIIIHH", cookie, 0xFFFFFFFFFFFFFFFF, ALL_TABLES, DELETE, 0, 0,
                       0, NO_BUFFER, ANY, ANY, 0, 0)
    return struct.pack("!BBHI", VERSION, FLOW_MOD, 8 + len(body) + len(match), xid) + body + match
