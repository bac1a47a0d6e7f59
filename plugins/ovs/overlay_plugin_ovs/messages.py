"""The two protobuf messages the plugin exchanges, encoded by hand.

They mirror proto/overlay/cni/v1/cni.proto (CniRequest out, CniReply back) so the plugin need
not import protobuf at start-up (nor `dataclasses`, which with what it imports cost the plugin
~40 ms of start-up on a loaded machine: Reply is a plain class).
tests/unit/test_plugin_wire.py round-trips them through the generated classes, so a change to
the .proto that is not made here fails the tests.
"""

from __future__ import annotations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_request(env: dict[str, str], netconf: bytes) -> bytes:
    """CniRequest { map<string,string> env = 1; bytes netconf = 2; }"""
    out = b""
    for key, value in sorted(env.items()):
        entry = _field(1, key.encode()) + _field(2, value.encode())
        out += _field(1, entry)
    return out + _field(2, netconf)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict[int, int | bytes]:
    """Field number -> value for a flat message (last one wins, as protobuf says)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            out[number], pos = data[pos:pos + length], pos + length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


class Reply:
    __slots__ = ("result", "is_error", "code", "msg", "details")

    def __init__(self, result: bytes = b"", is_error: bool = False, code: int = 0,
                 msg: str = "", details: str = "") -> None:
        self.result, self.is_error, self.code = result, is_error, code
        self.msg, self.details = msg, details

    def _fields(self) -> tuple[bytes, bool, int, str, str]:
        return self.result, self.is_error, self.code, self.msg, self.details

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        result, is_error, code, msg, details = self._fields()
        return (f"Reply(result={result!r}, is_error={is_error!r}, code={code!r}, msg={msg!r}, "
                f"details={details!r})")


def decode_reply(data: bytes) -> Reply:
    """CniReply { oneof outcome { bytes result = 1; CniError error = 2; } }"""
    fields = _fields(data)
    error = fields.get(2)
    if isinstance(error, bytes):
        e = _fields(error)
        code = e.get(1, 0)
        msg, details = e.get(2, b""), e.get(3, b"")
        return Reply(is_error=True, code=code if isinstance(code, int) else 0,
                     msg=msg.decode() if isinstance(msg, bytes) else "",
                     details=details.decode() if isinstance(details, bytes) else "")
    result = fields.get(1, b"")
    return Reply(result=result if isinstance(result, bytes) else b"")
