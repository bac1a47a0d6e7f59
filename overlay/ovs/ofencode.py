"""OpenFlow 1.4 flow mods from rule values (overlay/ovs/flow.py), byte for byte as ovs-ofctl
sends the same rules.

It encodes the fields in oxm._MATCH (oxm.py: the match fields and their order) and the
actions in _action; anything else raises Unsupported and the caller goes through ovs-ofctl
(with the rule rendered by flowtext.py), which understands everything.
tests/integration/test_openflow_channel.py installs the whole table both ways and compares.

Speed matters here once per restart: the whole table (100,000 rules at 50,000 remote endpoints)
is encoded while ovs-vswitchd waits for it, and that was 2.5 s of the 9 s a restart took. So an
`Encoder` lives for one bundle and memoizes what repeats across its rules: the match fields
that are not addresses (`reg0=42`, `eth_type=arp`, `arp_op=1`: a table's worth of rules share a
handful), the fixed part of a flow mod (table, command, priority, cookie), and whole
instruction lists (every endpoint of a host forwards with the same actions tuple). What is
unique per rule (a MAC, an address) is cheap to encode directly. The ARP responder
(flow.ArpReply) is built from a template, without being expanded into its eight actions.

Match fields are written in the order ovs-vswitchd reports them, so that a rule's bytes here
and in a dump of the switch are the same (`Encoder.key`, `Channel.holds_exactly`).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

from overlay.ovs.flow import (
    IN_PORT as FLOW_IN_PORT,
)
from overlay.ovs.flow import (
    Action,
    Actions,
    ArpReply,
    Conjunction,
    Controller,
    Ct,
    GotoTable,
    Identity,
    Load,
    Move,
    Output,
    Resubmit,
    SetField,
    Value,
)
from overlay.ovs.oxm import (
    _FAST,
    _MATCH,
    _RANK,
    ARP_SHA,
    ARP_SPA,
    BASIC,
    ETH_SRC,
    NXM_ARP_OP,
    NXM_ARP_SHA,
    NXM_ARP_SPA,
    NXM_ARP_THA,
    NXM_ARP_TPA,
    NXM_ETH_DST,
    NXM_ETH_SRC,
    REG0,
    REG1,
    TUN_DST,
    TUNNEL_ID,
    Encoded,
    Field,
    _fields,
    _ipv4,
    _mac,
    _match,
    _oxm,
    _udp_checked,
    _value,
)

# Re-exported: the callers (openflow.py, the tests) know the encoder as this module.
from overlay.ovs.oxm import Unsupported as Unsupported
from overlay.ovs.oxm import encode_match as encode_match

VERSION = 0x05  # OpenFlow 1.4
FLOW_MOD = 14
COMMANDS = {"add": 0, "modify_strict": 2, "delete_strict": 4}
NO_BUFFER = ANY = 0xFFFFFFFF
IN_PORT = 0xFFFFFFF8
NX_VENDOR, NXAST_REG_MOVE, NXAST_REG_LOAD, NXAST_RESUBMIT_TABLE = 0x00002320, 6, 7, 14
NXAST_CONJUNCTION, NXAST_CT, NX_CT_F_COMMIT, NX_CT_RECIRC_NONE = 34, 35, 1, 0xFF
# controller(meter_id=N) is Nicira's controller2: a header, then one property of 8 bytes.
NXAST_CONTROLLER2, NXAC2PT_METER_ID = 37, 5
OFPP_IN_PORT_16 = 0xFFF8  # resubmit's in_port is 16 bits wide: "keep the packet's in_port"
DELETE, ALL_TABLES = 3, 0xFF

_SET_FIELD = {"tun_dst": TUN_DST, "tun_id": TUNNEL_ID, "arp_sha": ARP_SHA, "arp_spa": ARP_SPA,
              "eth_src": ETH_SRC}
_NXM = {"reg0": REG0, "reg1": REG1, "eth_src": NXM_ETH_SRC, "eth_dst": NXM_ETH_DST, "arp_sha": NXM_ARP_SHA,
        "arp_tha": NXM_ARP_THA, "arp_spa": NXM_ARP_SPA, "arp_tpa": NXM_ARP_TPA,
        "arp_op": NXM_ARP_OP}


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


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


@functools.lru_cache(maxsize=8192)
def _action(action: Action) -> tuple[bytes, int | None]:
    """One primitive action: (bytes for apply_actions, or goto_table's table). Remembered:
    a network's broadcast rule lists three per host, re-encoded whenever a host comes or
    goes."""
    try:
        return _primitive(action)
    except (ValueError, OverflowError, struct.error) as exc:
        raise Unsupported(f"action {action!r}: {exc}") from None


def _primitive(action: object) -> tuple[bytes, int | None]:
    if isinstance(action, GotoTable):
        return b"", action.table
    if isinstance(action, Output):
        return _output(IN_PORT if action.port == FLOW_IN_PORT else action.port), None
    if isinstance(action, SetField) and action.field in _SET_FIELD:
        field = _SET_FIELD[action.field]
        return _set_field_action(field, _value(field, action.value)[0]), None
    if isinstance(action, Load) and action.field in ("reg0", "reg1", "arp_op"):
        return _load(_NXM[action.field], action.value), None
    if isinstance(action, Resubmit):
        # ovs-ofctl sends resubmit(,T) as Nicira resubmit_table with in_port IN_PORT.
        return struct.pack("!HHIHHB3x", 0xFFFF, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE,
                           OFPP_IN_PORT_16, action.table), None
    if isinstance(action, Ct):
        # nx_action_conntrack: flags, zone_src 0 (an immediate zone), the zone, the table to
        # recirculate to (none: carry on), 3 pad, alg 0; no nested actions.
        table = NX_CT_RECIRC_NONE if action.table is None else action.table
        return struct.pack("!HHIHHIHB3xH", 0xFFFF, 24, NX_VENDOR, NXAST_CT,
                           NX_CT_F_COMMIT if action.commit else 0, 0, action.zone, table, 0), None
    if isinstance(action, Conjunction):
        if not 1 <= action.clause <= action.clauses <= 64 or action.clauses < 2:
            raise ValueError("clause k/n needs 1 <= k <= n, 2 <= n <= 64")
        return struct.pack("!HHIHBBI", 0xFFFF, 16, NX_VENDOR, NXAST_CONJUNCTION,
                           action.clause - 1, action.clauses, action.id), None
    if isinstance(action, Controller):
        return (struct.pack("!HHIH6x", 0xFFFF, 24, NX_VENDOR, NXAST_CONTROLLER2)
                + struct.pack("!HHI", NXAC2PT_METER_ID, 8, action.meter_id)), None
    if isinstance(action, Move) and action.src in _NXM and action.dst in _NXM \
            and _NXM[action.src][2] == _NXM[action.dst][2]:
        return _move(_NXM[action.src], _NXM[action.dst]), None
    raise Unsupported(f"action {action!r}")


def encode_action_list(actions: Actions) -> bytes:
    """Actions alone, not in an instruction (a packet-out's); no goto_table among them."""
    out = b""
    for action in actions:
        data, table = _action(action)
        if table is not None:
            raise Unsupported("goto_table outside a rule")
        out += data
    return out


def encode_actions_generic(actions: Actions) -> bytes:
    """Instructions from actions, one by one (ArpReply expanded): the reference for the
    shortcuts."""
    applied, goto = b"", None
    for action in actions:
        for primitive in action.expand() if isinstance(action, ArpReply) else (action,):
            data, table = _action(primitive)
            applied += data
            if table is not None:
                goto = table
    out = b""
    if applied:
        out += struct.pack("!HH4x", 4, 8 + len(applied)) + applied
    if goto is not None:
        out += struct.pack("!HHB3x", 1, 8, goto)
    return out


# The ARP responder (flow.ArpReply.expand): the same bytes for every endpoint but for its MAC
# (twice) and address, which sit at fixed offsets. So: constant pieces around them.
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


def encode_instructions(actions: Actions) -> bytes:
    """Instructions for a rule's actions: a lone ArpReply from its template."""
    if len(actions) == 1 and type(actions[0]) is ArpReply:
        reply = actions[0]
        try:
            return arp_reply(_mac(reply.mac), _ipv4(reply.ip))
        except ValueError as exc:
            raise Unsupported(f"ARP reply {reply!r}: {exc}") from None
    return encode_actions_generic(actions)


def encode_body(kind: str, table: int, priority: int, cookie: int) -> bytes:
    """The fixed part of a flow mod, between its header and its match."""
    return struct.pack("!QQBBHHHIIIHH", cookie if kind == "add" else 0, 0, table,
                       COMMANDS[kind], 0, 0, priority, NO_BUFFER, ANY, ANY, 0, 0)


# What an Encoder keeps of a shape (a rule's kind, table, priority and match but for its last
# value): the flow mod's body; for a last field of _FAST, its encoder and the OXMs of the
# other fields before and after it in the switch's order; and the other fields' (rank, OXM).
Shape = tuple[bytes, Callable[[str], bytes] | None, bytes, bytes, list[Encoded]]
RuleKey = tuple[int, int, bytes]  # (table, priority, match + instructions): a rule's content


class Encoder:
    """Flow mods for one bundle, remembering what repeats across its rules (see the top).

    A rule's identity but its last match value (table 20, priority 100, reg0=42, eth_dst of
    `..., eth_dst=<mac>`) is its shape: the rules of one kind in one network share it, so its
    flow mod body and other match fields are encoded once; only the last value is encoded per
    rule, and slotted in among the other fields where the switch's order puts it.
    """

    def __init__(self, cookie: int) -> None:
        self._cookie = cookie
        self._pairs: dict[tuple[str | Value, str | Value], Encoded] = {}
        # id(actions) -> (actions, instructions): the actions tuples of a table are shared
        # (one per VTEP, per port), and their values hash in Python, not in C.
        self._instructions: dict[int, tuple[Actions, bytes]] = {}
        self._shapes: dict[tuple[str, tuple[str | Value, ...]], Shape] = {}

    def flow_mod(self, kind: str, identity: Identity, actions: Actions, xid: int) -> bytes:
        body, match, instructions = self._encode(kind, identity, actions)
        length = 8 + len(body) + len(match) + len(instructions)
        return struct.pack("!BBHI", VERSION, FLOW_MOD, length, xid) + body + match + instructions

    def key(self, identity: Identity, actions: Actions) -> RuleKey:
        """What the switch reports of this rule once added (Channel.table_keys), cookie aside."""
        _, match, instructions = self._encode("add", identity, actions)
        return identity.table, identity.priority, match + instructions

    def _shape(self, kind: str, table: int, priority: int, m: tuple[str | Value, ...]) -> Shape:
        if kind not in COMMANDS or not (0 <= table < 255 and 0 <= priority < 1 << 16):
            raise Unsupported(f"flow mod {kind} table={table} priority={priority}")
        body = encode_body(kind, table, priority, self._cookie)
        # The other fields alone are not checked for UDP ports (the last may be ip_proto).
        fields = _fields(m[:-2], self._pairs)
        fast = _FAST.get(m[-2]) if m else None
        if fast is None:
            return body, None, b"", b"", fields
        _udp_checked(fields)
        rank = _RANK[_MATCH[str(m[-2])]]
        return (body, fast, b"".join(oxm for r, oxm in fields if r < rank),
                b"".join(oxm for r, oxm in fields if r > rank), fields)

    def _encode(self, kind: str, identity: Identity, actions: Actions
                ) -> tuple[bytes, bytes, bytes]:
        m = identity[2:]  # the match: identity is (table, priority, name, value, ...)
        shape_key = (kind, identity[:-1])
        shape = self._shapes.get(shape_key)
        if shape is None:
            shape = self._shapes[shape_key] = self._shape(kind, identity.table, identity.priority,
                                                          m)
        body, fast, before, after, fields = shape
        value = m[-1] if m else None
        if fast is not None and type(value) is str and "/" not in value:
            # The common case: one per-endpoint value among the shape's fields.
            try:
                match = _match(before + fast(value) + after)
            except ValueError as exc:
                raise Unsupported(f"match {m[-2]}={value!r}: {exc}") from None
        else:
            extra = _fields(m[-2:], self._pairs) if m else []
            match = _match(b"".join(oxm for _, oxm in _udp_checked(sorted(fields + extra))))
        if kind == "delete_strict":
            instructions = b""
        elif len(actions) == 1 and type(actions[0]) is ArpReply:  # unique: not remembered
            instructions = encode_instructions(actions)
        else:
            known = self._instructions.get(id(actions))
            if known is None or known[0] is not actions:
                known = self._instructions[id(actions)] = (actions, encode_instructions(actions))
            instructions = known[1]
        return body, match, instructions


def encode_delete_cookie(cookie: int, xid: int) -> bytes:
    """Delete, in every table, the rules whose cookie is exactly `cookie`."""
    match = _pad8(struct.pack("!HH", 1, 4))
    body = struct.pack("!QQBBHHHIIIHH", cookie, 0xFFFFFFFFFFFFFFFF, ALL_TABLES, DELETE, 0, 0,
                       0, NO_BUFFER, ANY, ANY, 0, 0)
    return struct.pack("!BBHI", VERSION, FLOW_MOD, 8 + len(body) + len(match), xid) + body + match
