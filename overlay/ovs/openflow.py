"""A persistent OpenFlow 1.4 channel to one bridge, for the event path's flow bundles.

`ovs-ofctl --bundle add-flows` costs 30-50 ms here per call: a process start, a new connection,
and a table-features request that makes ovs-vswitchd describe all 255 tables before every
flow mod. An event that changes two rules should not pay that. This channel keeps one
connection to the bridge's management socket and sends a bundle as OPEN, ADD_MESSAGE per flow
mod and a barrier in one write. ovs-vswitchd checks each flow mod as it is added and commits
whatever was added without error, so the commit (or, if any add was refused, a discard) is
sent only after the barrier's reply: all or nothing, for one more round trip of a millisecond.

It encodes only the vocabulary flows.py writes (the matches and actions listed in _MATCH and
_action below). Anything else raises Unsupported, and the caller falls back to ovs-ofctl, which
understands everything: so a new kind of rule works at once, only slower until it is taught
here. tests/integration/test_openflow_channel.py installs the whole table both ways on two
bridges and compares what OVS reports.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import threading
from collections.abc import Callable

from overlay.errors import CniError, Code

VERSION = 0x05  # OpenFlow 1.4
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, FLOW_MOD = 0, 1, 2, 3, 14
BARRIER_REQUEST, BARRIER_REPLY, BUNDLE_CONTROL, BUNDLE_ADD = 20, 21, 33, 34
OPEN_REQUEST, COMMIT_REQUEST, COMMIT_REPLY, DISCARD_REQUEST = 0, 4, 5, 6
ATOMIC_ORDERED = 0x3
COMMANDS = {"add": 0, "modify_strict": 2, "delete_strict": 4}
NO_BUFFER = ANY = 0xFFFFFFFF
IN_PORT = 0xFFFFFFF8
NX_VENDOR, NXAST_REG_MOVE, NXAST_REG_LOAD, NXAST_RESUBMIT_TABLE = 0x00002320, 6, 7, 14
OFPP_IN_PORT_16 = 0xFFF8  # resubmit's in_port is 16 bits wide: "keep the packet's in_port"
DELETE, ALL_TABLES = 3, 0xFF


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
REG0, TUN_SRC, TUN_DST = (NXM1, 0, 4), (NXM1, 31, 4), (NXM1, 32, 4)
NXM_ETH_DST, NXM_ETH_SRC = (NXM0, 1, 6), (NXM0, 2, 6)
NXM_ARP_SPA, NXM_ARP_TPA = (NXM0, 16, 4), (NXM0, 17, 4)
NXM_ARP_SHA, NXM_ARP_THA = (NXM1, 17, 6), (NXM1, 18, 6)
Field = tuple[int, int, int]

# Protocol keywords: what they put into the match (eth_type, ip_proto).
_KEYWORDS = {"ip": (0x0800, None), "arp": (0x0806, None), "ipv6": (0x86DD, None),
             "icmp6": (0x86DD, 58), "udp": (0x0800, 17)}
_MATCH: dict[str, Field] = {
    "in_port": IN_PORT_F, "dl_src": ETH_SRC, "dl_dst": ETH_DST, "nw_src": IPV4_SRC,
    "nw_dst": IPV4_DST, "tp_src": UDP_SRC, "tp_dst": UDP_DST,  # tp_*: flows.py uses them with udp only
    "arp_op": ARP_OP, "arp_spa": ARP_SPA, "arp_tpa": ARP_TPA, "arp_sha": ARP_SHA,
    "ipv6_src": IPV6_SRC, "icmp_type": ICMPV6_TYPE, "tun_src": TUN_SRC, "tun_id": TUNNEL_ID,
    "reg0": REG0,
}
_SET_FIELD = {"tun_dst": TUN_DST, "tun_id": TUNNEL_ID, "arp_sha": ARP_SHA, "arp_spa": ARP_SPA}
_NXM = {"NXM_NX_REG0[]": REG0, "NXM_OF_ETH_SRC[]": NXM_ETH_SRC, "NXM_OF_ETH_DST[]": NXM_ETH_DST,
        "NXM_NX_ARP_SHA[]": NXM_ARP_SHA, "NXM_NX_ARP_THA[]": NXM_ARP_THA,
        "NXM_OF_ARP_SPA[]": NXM_ARP_SPA, "NXM_OF_ARP_TPA[]": NXM_ARP_TPA,
        "NXM_OF_ARP_OP[]": ARP_OP}


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
    if field in (IPV4_SRC, IPV4_DST, ARP_SPA, ARP_TPA, TUN_SRC, TUN_DST) and "." in value:
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


def encode_match(tokens: list[str]) -> bytes:
    fields: list[tuple[Field, bytes, bytes | None]] = []
    eth_type = ip_proto = None
    for token in tokens:
        if token in _KEYWORDS:
            eth_type, ip_proto = _KEYWORDS[token]
            continue
        key, sep, text = token.partition("=")
        if not sep or key not in _MATCH:
            raise Unsupported(f"match {token!r}")
        fields.append((_MATCH[key], *_value(_MATCH[key], text)))
    if ip_proto != 17 and any(f in (UDP_SRC, UDP_DST) for f, _, _ in fields):
        raise Unsupported("tp_src/tp_dst other than UDP")
    # Prerequisites first, as OXM wants them: Ethernet type, then IP protocol.
    ordered = []
    if eth_type is not None:
        ordered.append(_oxm(ETH_TYPE, eth_type.to_bytes(2, "big")))
    if ip_proto is not None:
        ordered.append(_oxm(IP_PROTO, bytes([ip_proto])))
    body = b"".join(ordered) + b"".join(_oxm(f, v, m) for f, v, m in fields)
    return _pad8(struct.pack("!HH", 1, 4 + len(body)) + body)


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


def _set_field_action(field: Field, value: bytes) -> bytes:
    return _sized(25, _oxm(field, value))


_ACTION_SPLIT = re.compile(r",(?![^(]*\))")


# The ARP responder's actions (flows.py), one list per endpoint: the most common rule at scale
# (50,000 at 50,000 remote endpoints). Encoded from a template, not token by token: a restart
# encodes them all at once. tests/unit/test_openflow_encode.py holds it to the general path.
_ARP_REPLY = re.compile(
    r"move:NXM_OF_ETH_SRC\[\]->NXM_OF_ETH_DST\[\],mod_dl_src:([0-9a-f:]{17}),"
    r"load:0x2->NXM_OF_ARP_OP\[\],move:NXM_NX_ARP_SHA\[\]->NXM_NX_ARP_THA\[\],"
    r"move:NXM_OF_ARP_SPA\[\]->NXM_OF_ARP_TPA\[\],set_field:([0-9a-f:]{17})->arp_sha,"
    r"set_field:([0-9.]+)->arp_spa,IN_PORT")


def _arp_reply(mac: bytes, ip: bytes) -> bytes:
    swap, make_reply, tail = _ARP_PARTS
    applied = (swap + _set_field_action(ETH_SRC, mac) + make_reply
               + _set_field_action(ARP_SHA, mac) + _set_field_action(ARP_SPA, ip) + tail)
    return struct.pack("!HH4x", 4, 8 + len(applied)) + applied


_ARP_PARTS = (_move(NXM_ETH_SRC, NXM_ETH_DST),
              _load(ARP_OP, 2) + _move(NXM_ARP_SHA, NXM_ARP_THA) + _move(NXM_ARP_SPA, NXM_ARP_TPA),
              _output(IN_PORT))


def encode_instructions(actions: str) -> bytes:
    if actions.startswith("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:"):
        found = _ARP_REPLY.fullmatch(actions)
        if found and found[1] == found[2]:
            try:
                return _arp_reply(_mac(found[1]), _ipv4(found[3]))
            except ValueError:
                pass  # the general path says what is wrong with it
    return encode_actions_generic(actions)


def encode_actions_generic(actions: str) -> bytes:
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


def encode_flow_mod(kind: str, identity: str, actions: str, cookie: int, xid: int,
                    instructions_of: dict[str, bytes] | None = None) -> bytes:
    """One flow mod. `instructions_of` caches encoded actions across the calls of one bundle
    (every endpoint of a host has the same forwarding actions)."""
    tokens = identity.split(",")
    if not (tokens[0].startswith("table=") and tokens[1].startswith("priority=")):
        raise Unsupported(f"identity {identity!r}")
    table, priority = int(tokens[0][6:]), int(tokens[1][9:])
    match = encode_match(tokens[2:])
    if kind == "delete_strict":
        instructions = b""
    elif instructions_of is None:
        instructions = encode_instructions(actions)
    else:
        cached = instructions_of.get(actions)
        if cached is None:
            cached = instructions_of[actions] = encode_instructions(actions)
        instructions = cached
    body = struct.pack("!QQBBHHHIIIHH", cookie if kind == "add" else 0, 0, table,
                       COMMANDS[kind], 0, 0, priority, NO_BUFFER, ANY, ANY, 0, 0)
    length = 8 + len(body) + len(match) + len(instructions)
    return struct.pack("!BBHI", VERSION, FLOW_MOD, length, xid) + body + match + instructions


def encode_delete_cookie(cookie: int, xid: int) -> bytes:
    """Delete, in every table, the rules whose cookie is exactly `cookie`."""
    match = _pad8(struct.pack("!HH", 1, 4))
    body = struct.pack("!QQBBHHHIIIHH", cookie, 0xFFFFFFFFFFFFFFFF, ALL_TABLES, DELETE, 0, 0,
                       0, NO_BUFFER, ANY, ANY, 0, 0)
    return struct.pack("!BBHI", VERSION, FLOW_MOD, 8 + len(body) + len(match), xid) + body + match


class Channel:
    """One connection to a bridge; `apply` sends one atomic bundle. Not thread-safe: the
    dataplane calls it under its apply lock."""

    def __init__(self, *, rundir: str, bridge: str, timeout: float = 10.0) -> None:
        self._path = os.path.join(rundir, bridge + ".mgmt")
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._xid = 0
        self._bundle = 0
        self._lock = threading.Lock()

    def apply(self, ops: list[tuple[str, str, str]], cookie: int,
              delete_cookies: tuple[int, ...] = ()) -> None:
        """ops: (kind, identity, actions); then, if given, delete every rule whose cookie is
        one of `delete_cookies` (after the ops, in the same bundle). Raises Unsupported before
        anything is sent, and CniError if the switch refuses the bundle or cannot be reached
        (after one reconnect)."""
        with self._lock:
            cache: dict[str, bytes] = {}
            messages = [encode_flow_mod(kind, identity, actions, cookie, self._next_xid(), cache)
                        for kind, identity, actions in ops]
            messages += [encode_delete_cookie(c, self._next_xid()) for c in delete_cookies]
            for attempt in (1, 2):
                try:
                    return self._send_bundle(messages)
                except OSError as exc:  # connection gone (vswitchd restarted): once more
                    self.close()
                    if attempt == 2:
                        raise CniError(Code.OVS_FAILURE, f"cannot reach {self._path}",
                                       str(exc)) from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(self._path)
            sock.sendall(struct.pack("!BBHI", VERSION, HELLO, 8, self._next_xid()))
            version, kind, _, _ = self._read_message(sock)[0]
            if kind != HELLO:
                sock.close()
                raise OSError(f"expected HELLO from {self._path}, got type {kind}")
            self._sock = sock
        return self._sock

    def _send_bundle(self, messages: list[bytes]) -> None:
        sock = self._connect()
        # A whole table (100,000 rules at 50,000 remote endpoints) takes the switch seconds
        # to check and commit: allow for 5,000 flow mods a second on a loaded machine.
        sock.settimeout(max(self._timeout, len(messages) / 5000))
        self._bundle = (self._bundle + 1) & 0xFFFFFFFF
        out = [self._control(OPEN_REQUEST)]
        for inner in messages:  # the ADD_MESSAGE carries the xid of the message inside it
            xid = struct.unpack_from("!I", inner, 4)[0]
            out.append(struct.pack("!BBHIIHH", VERSION, BUNDLE_ADD, 16 + len(inner), xid,
                                   self._bundle, 0, ATOMIC_ORDERED) + inner)
        barrier_xid = self._next_xid()
        out.append(struct.pack("!BBHI", VERSION, BARRIER_REQUEST, 8, barrier_xid))
        sock.sendall(b"".join(out))
        errors = self._until(sock, lambda kind, xid, body: kind == BARRIER_REPLY
                             and xid == barrier_xid)
        if errors:
            discard = self._control(DISCARD_REQUEST)
            sock.sendall(discard)
            self._until(sock, lambda kind, xid, body: xid == struct.unpack_from("!I", discard, 4)[0])
            raise CniError(Code.OVS_FAILURE, "the switch refused a flow; nothing was changed",
                           "; ".join(errors))
        commit = self._control(COMMIT_REQUEST)
        commit_xid = struct.unpack_from("!I", commit, 4)[0]
        sock.sendall(commit)
        replies: list[bytes] = []

        def committed(kind: int, xid: int, body: bytes) -> bool:
            if kind == BUNDLE_CONTROL and xid == commit_xid:
                replies.append(body)
                return True
            return False
        errors = self._until(sock, committed, stop_on_error_xid=commit_xid)
        if errors or not replies or struct.unpack_from("!IH", replies[0])[1] != COMMIT_REPLY:
            raise CniError(Code.OVS_FAILURE, "the switch refused a flow bundle",
                           "; ".join(errors) or repr(replies))

    def _until(self, sock: socket.socket, done: Callable[[int, int, bytes], bool],
               stop_on_error_xid: int | None = None) -> list[str]:
        """Read messages until `done` says so; answer echoes; collect errors."""
        errors = []
        while True:
            (version, kind, _, xid), body = self._read_message(sock)
            if kind == ECHO_REQUEST:
                sock.sendall(struct.pack("!BBHI", version, ECHO_REPLY, 8 + len(body), xid) + body)
            elif kind == ERROR:
                err_type, err_code = struct.unpack_from("!HH", body)
                errors.append(f"OpenFlow error type {err_type} code {err_code} (xid {xid})")
                if xid == stop_on_error_xid:
                    return errors
            if done(kind, xid, body):
                return errors

    def _control(self, kind: int) -> bytes:
        return struct.pack("!BBHIIHH", VERSION, BUNDLE_CONTROL, 16, self._next_xid(),
                           self._bundle, kind, ATOMIC_ORDERED)

    @staticmethod
    def _read_message(sock: socket.socket) -> tuple[tuple[int, int, int, int], bytes]:
        header = _read_exactly(sock, 8)
        version, kind, length, xid = struct.unpack("!BBHI", header)
        return (version, kind, length, xid), _read_exactly(sock, length - 8)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the switch closed the OpenFlow connection")
        data += chunk
    return data
