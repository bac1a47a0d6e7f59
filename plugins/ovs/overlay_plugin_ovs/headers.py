"""HPACK (RFC 7541) for the plugin's one gRPC exchange: encode a request, decode the answer.

Why not the `hpack` package: importing it (it pulls in `logging`, `enum`, `re`, `typing`)
took about 60 ms of the plugin's start-up on a loaded 2-core machine, more than the whole of
the rest of the plugin, and the plugin lives for one call. What one call needs is small:

- encoding: every request header as a literal without indexing and without Huffman coding
  (allowed to any encoder; the block is a few hundred bytes either way);
- decoding: whatever grpcio's server sends, which may index into the static and dynamic
  tables and Huffman-code strings, so the decoder is complete: integers, strings (raw or
  Huffman), the static table, the dynamic table with eviction, table size updates.

The Huffman code of RFC 7541 Appendix B is canonical (codes of one length are consecutive, in
symbol order), so the code lengths below are all of it; tests/unit/test_plugin_wire.py checks
the decoder against the `hpack` package's encoder and the real grpcio server.
"""

from __future__ import annotations


class HpackError(Exception):
    """A header block we cannot decode: the agent's answer is unusable."""


STATIC = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

# Code length in bits of each symbol 0..256 (256 is EOS), as chr(ord("0") + length).
_LENGTHS = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777777"
    "878=C=>6?56565666577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFFHEFG"
    "GEEFEGFGGDFFFGFFGJJDCFGFIJJJKKJHICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN"
)


def _canonical() -> tuple[list[int], list[int], list[int]]:
    """Per code length: how many codes, the first code; and the symbols in code order."""
    lengths = [ord(c) - ord("0") for c in _LENGTHS]
    symbols = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    counts = [0] * 32
    for n in lengths:
        counts[n] += 1
    firsts, code = [0] * 32, 0
    for n in range(1, 32):
        firsts[n] = code
        code = (code + counts[n]) << 1
    return counts, firsts, symbols


_TABLES: list[tuple[list[int], list[int], list[int], list[int]]] = []  # built on first use


def huffman_decode(data: bytes) -> bytes:
    if not _TABLES:
        counts, firsts, symbols = _canonical()
        _TABLES.append((counts, firsts, symbols, [sum(counts[:n]) for n in range(32)]))
    _COUNTS, _FIRSTS, _SYMBOLS, _OFFSETS = _TABLES[0]  # noqa: N806 (constants, once built)
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = code << 1 | (byte >> shift) & 1
            length += 1
            if 0 <= code - _FIRSTS[length] < _COUNTS[length]:
                symbol = _SYMBOLS[_OFFSETS[length] + code - _FIRSTS[length]]
                if symbol == 256:
                    raise HpackError("EOS inside a Huffman-coded string")
                out.append(symbol)
                code = length = 0
            elif length >= 30:
                raise HpackError("invalid Huffman code")
    if length > 7 or code != (1 << length) - 1:  # padding: at most 7 bits, all ones
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    if pos >= len(data):
        raise HpackError("header block ends inside an integer")
    limit = (1 << prefix) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise HpackError("bad integer in header block")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise HpackError("header block ends before a string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    if pos + length > len(data):
        raise HpackError("header block ends inside a string")
    raw = data[pos:pos + length]
    return (huffman_decode(raw) if huffman else raw).decode("utf-8", "replace"), pos + length


class Decoder:
    """One connection's decoding state (the dynamic table lives as long as the connection)."""

    def __init__(self, max_size: int = 4096) -> None:
        self._max = max_size  # SETTINGS_HEADER_TABLE_SIZE we announce: the default
        self._size = max_size
        self._table: list[tuple[str, str]] = []  # newest first
        self._used = 0

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC):
            return STATIC[index - 1]
        if 0 <= index - len(STATIC) - 1 < len(self._table):
            return self._table[index - len(STATIC) - 1]
        raise HpackError(f"header index {index} is in no table")

    def _resize(self, size: int) -> None:
        self._size = size
        while self._used > self._size:
            name, value = self._table.pop()
            self._used -= len(name.encode()) + len(value.encode()) + 32

    def _add(self, name: str, value: str) -> None:
        self._table.insert(0, (name, value))
        self._used += len(name.encode()) + len(value.encode()) + 32
        self._resize(self._size)

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(data):
            first = data[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(data, pos, 7)
                out.append(self._entry(index))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                size, pos = _integer(data, pos, 5)
                if size > self._max:
                    raise HpackError("table size update above our limit")
                self._resize(size)
                continue
            indexing = first & 0xC0 == 0x40
            index, pos = _integer(data, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = _string(data, pos)
            value, pos = _string(data, pos)
            out.append((name, value))
            if indexing:
                self._add(name, value)
        return out


def _literal(text: str) -> bytes:
    raw = text.encode()
    length = len(raw)
    if length < 0x7F:
        return bytes([length]) + raw
    out, length = bytearray([0x7F]), length - 0x7F
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    return bytes(out) + bytes([length]) + raw


def encode(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, no Huffman coding."""
    return b"".join(b"\x00" + _literal(name) + _literal(value) for name, value in headers)
