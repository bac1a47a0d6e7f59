"""An OpenFlow 1.4 connection that receives packet-ins and sends packet-outs (mechanics only:
agent/rejects.py decides what to answer).

It is a connection to the bridge's management socket (`<bridge>.mgmt`), which ovs-vswitchd
treats as a *service* connection: unlike a configured controller (Bridge.controller in OVSDB,
a "primary" connection), a service connection gets no asynchronous message at all until it
sets a nonzero miss_send_len (OFPT_SET_CONFIG; ovs-vswitchd's connmgr.c,
ofconn_receives_async_msg). So the flow channel (openflow.py) and every ovs-ofctl run never
see a packet-in, and this connection asks for them explicitly. Nothing is configured in
OVSDB: no controller, no fail mode change, no listener on the network.

It then narrows what it gets with OFPT_SET_ASYNC (OpenFlow 1.4's property form): packet-ins of
reason "apply actions" (a `controller` action in a rule) only; no port status, flow removed,
role or table status messages. Every packet-in is read with the metadata ovs-vswitchd puts in
its match (in_port, and the tunnel's source and VNI when the packet came through one), which
is what the answer needs to go back where the packet came from.

A packet-in's match and data are read defensively (the data is a container's bytes; the rest
is the switch's, but a malformed message must cost the agent a log line, not its thread):
`Malformed` is raised for a message that cannot be read, and the connection stays usable.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass

from overlay.ovs.flow import Actions
from overlay.ovs.ofencode import encode_action_list
from overlay.ovs.openflow import read_exactly

VERSION = 0x05  # OpenFlow 1.4
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY = 0, 1, 2, 3
SET_CONFIG, PACKET_IN, PACKET_OUT, SET_ASYNC = 9, 10, 13, 28
REASON_ACTION = 1            # OFPR_APPLY_ACTION: a `controller` action in a rule
NO_BUFFER, OFPP_CONTROLLER = 0xFFFFFFFF, 0xFFFFFFFD
MAX_PORT = 0xFFFFFF00        # above: reserved ports, never a packet's real in_port
# OFPT_SET_ASYNC properties (OpenFlow 1.4): 0..11 are the "slave" and "master" masks of packet
# in, port status, flow removed, role status, table status and request forward. A service
# connection's role is "equal", which reads the master masks.
ASYNC_PROPERTIES, PACKET_IN_MASTER = 12, 1
# Match fields of a packet-in (class, field): OpenFlow basic, and Nicira's for the tunnel.
OXM_BASIC, NXM_1 = 0x8000, 0x0001
IN_PORT, TUNNEL_ID = (OXM_BASIC, 0), (OXM_BASIC, 38)
TUN_IPV4_SRC = (NXM_1, 31)


class Malformed(ValueError):
    """A message that cannot be read as what its type says."""


@dataclass(frozen=True)
class PacketIn:
    table: int
    reason: int
    cookie: int
    in_port: int
    tun_src: str | None   # the sending VTEP, when it came through a tunnel
    tun_id: int | None
    data: bytes           # the packet, at most the controller action's max_len of it
    total_len: int        # the packet's length before that cut


def parse_packet_in(body: bytes) -> PacketIn:
    """An OFPT_PACKET_IN's body (after the 8-byte header)."""
    if len(body) < 16 + 4:
        raise Malformed(f"packet-in of {len(body)} bytes")
    _, total_len, reason, table, cookie = struct.unpack_from("!IHBBQ", body)
    match_type, match_len = struct.unpack_from("!HH", body, 16)
    padded = (match_len + 7) // 8 * 8
    if match_type != 1 or match_len < 4 or 16 + padded + 2 > len(body):
        raise Malformed(f"packet-in match type {match_type} of {match_len} bytes")
    fields = _oxm_fields(body[16 + 4:16 + match_len])
    port = fields.get(IN_PORT)
    if port is None or len(port) != 4:
        raise Malformed("packet-in without an in_port")
    tun_src, tun_id = fields.get(TUN_IPV4_SRC), fields.get(TUNNEL_ID)
    return PacketIn(
        table=table, reason=reason, cookie=cookie, in_port=struct.unpack("!I", port)[0],
        tun_src=str(ipaddress.IPv4Address(tun_src)) if tun_src and len(tun_src) == 4 else None,
        tun_id=int.from_bytes(tun_id, "big") if tun_id and len(tun_id) == 8 else None,
        data=body[16 + padded + 2:], total_len=total_len)


def _oxm_fields(data: bytes) -> dict[tuple[int, int], bytes]:
    """OXM TLVs -> (class, field) -> value (masked ones and experimenters' skipped)."""
    out: dict[tuple[int, int], bytes] = {}
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise Malformed("an OXM header cut short")
        oxm_class, field_mask, length = struct.unpack_from("!HBB", data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise Malformed(f"OXM {oxm_class:#x}:{field_mask >> 1} runs past the match")
        if not field_mask & 1 and oxm_class != 0xFFFF:
            out[(oxm_class, field_mask >> 1)] = data[offset + 4:end]
        offset = end
    return out


class PacketIns:
    """One connection to a bridge, for packet-ins and packet-outs; one thread uses it (the
    answerer's). connect() (again) after any OSError."""

    def __init__(self, *, rundir: str, bridge: str, timeout: float = 5.0) -> None:
        self._path = os.path.join(rundir, bridge + ".mgmt")
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._xid = 0

    def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self._path)
            sock.sendall(self._message(HELLO, b""))
            kind, _, _ = self._read(sock)
            if kind != HELLO:
                raise OSError(f"expected HELLO from {self._path}, got type {kind}")
            # flags 0, miss_send_len: nonzero is what lets a service connection get packet-ins.
            masks = [1 << REASON_ACTION if prop == PACKET_IN_MASTER else 0
                     for prop in range(ASYNC_PROPERTIES)]
            sock.sendall(self._message(SET_CONFIG, struct.pack("!HH", 0, 0xFFFF))
                         + self._message(SET_ASYNC, b"".join(
                             struct.pack("!HHI", prop, 8, mask) for prop, mask in enumerate(masks))))
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def receive(self, timeout: float) -> PacketIn | None:
        """The next packet-in, or None if none came within `timeout` seconds (echo requests are
        answered meanwhile). Raises OSError when the connection is gone, Malformed for a
        packet-in that cannot be read (the connection stays usable)."""
        sock = self._connected()
        if not select.select([sock], [], [], timeout)[0]:
            return None
        kind, xid, body = self._read(sock)
        if kind == ECHO_REQUEST:
            sock.sendall(self._message(ECHO_REPLY, body, xid))
        elif kind == ERROR and len(body) >= 4:
            err_type, code = struct.unpack_from("!HH", body)
            raise Malformed(f"the switch answered with error type {err_type} code {code}")
        elif kind == PACKET_IN:
            return parse_packet_in(body)
        return None

    def send(self, actions: Actions, data: bytes) -> None:
        """A packet-out of `data` through `actions` (in_port CONTROLLER)."""
        encoded = encode_action_list(actions)
        self._connected().sendall(self._message(PACKET_OUT, struct.pack(
            "!IIH6x", NO_BUFFER, OFPP_CONTROLLER, len(encoded)) + encoded + data))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionResetError("not connected")
        return self._sock

    def _message(self, kind: int, body: bytes, xid: int | None = None) -> bytes:
        if xid is None:
            self._xid = (self._xid + 1) & 0xFFFFFFFF
            xid = self._xid
        return struct.pack("!BBHI", VERSION, kind, 8 + len(body), xid) + body

    @staticmethod
    def _read(sock: socket.socket) -> tuple[int, int, bytes]:
        _, kind, length, xid = struct.unpack("!BBHI", read_exactly(sock, 8))
        if length < 8:
            raise OSError(f"an OpenFlow message of length {length}")
        return kind, xid, read_exactly(sock, length - 8)
