"""A minimal gRPC client: one unary call over HTTP/2 on a unix socket.

Why not grpcio: the plugin is a process that lives for one call, and `import grpc` alone costs
about 70 ms on the machines we measure on, more than half of an ADD's budget. A unary call is
a small, fixed exchange: the HTTP/2 preface and SETTINGS, one HEADERS + DATA request, then
HEADERS, DATA and trailers back. That is all this module speaks; the agent's side is the real
grpcio server, and tests/unit/test_plugin_wire.py checks this client against it.

HPACK (header compression) is headers.py: grpcio's server Huffman-codes and indexes its
headers, so they must be decoded, and the `hpack` package cost more start-up than the rest of
the plugin. The socket is `_socket`, the C module under `socket`: `import socket` brings in
`enum` and `selectors`, about 20 ms of start-up on a loaded machine, for nothing this needs;
likewise `_struct` rather than `struct`.
"""

from __future__ import annotations

import _socket
import _struct as struct  # the C module under `struct`: the same functions, no import of struct.py
import time

from overlay_plugin_ovs.headers import Decoder, HpackError, encode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, END_HEADERS, ACK, PADDED, PRIORITY = 0x1, 0x4, 0x1, 0x8, 0x20
STREAM = 1  # the one stream of this connection
SETTINGS_MAX_FRAME_SIZE, SETTINGS_INITIAL_WINDOW_SIZE = 0x5, 0x4
DEFAULT_WINDOW, DEFAULT_MAX_FRAME = 65_535, 16_384


class RpcFailure(Exception):
    """The call did not complete: transport trouble, or a non-OK grpc-status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", kind, flags, stream) + payload


class _Reader:
    def __init__(self, sock: _socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buf = b""

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise RpcFailure("DEADLINE_EXCEEDED", "no answer from the agent in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise RpcFailure("DEADLINE_EXCEEDED", "no answer from the agent in time") from None
            if not chunk:
                raise RpcFailure("UNAVAILABLE", "the agent closed the connection")
            self._buf += chunk

    def frame(self) -> tuple[int, int, int, bytes]:
        self._fill(9)
        length = int.from_bytes(self._buf[:3], "big")
        kind, flags, stream = struct.unpack("!BBI", self._buf[3:9])
        self._fill(9 + length)
        payload, self._buf = self._buf[9:9 + length], self._buf[9 + length:]
        return kind, flags, stream & 0x7FFFFFFF, payload


def _strip_padding(flags: int, payload: bytes, headers: bool) -> bytes:
    if flags & PADDED:
        pad = payload[0]
        payload = payload[1:len(payload) - pad]
    if headers and flags & PRIORITY:
        payload = payload[5:]
    return payload


class _Call:
    """One connection, one stream, with just enough HTTP/2 to honour flow control."""

    def __init__(self, sock: _socket.socket, deadline: float) -> None:
        self._sock = sock
        self._reader = _Reader(sock, deadline)
        self._decoder = Decoder()
        self._conn_window = self._stream_window = DEFAULT_WINDOW
        self._initial_window = DEFAULT_WINDOW
        self._max_frame = DEFAULT_MAX_FRAME
        self.body, self._block, self.fields = b"", b"", dict[str, str]()
        self.done = False
        self._ending = False

    def send_request(self, method: str, message: bytes, timeout: float) -> None:
        headers = encode([
            (":method", "POST"), (":scheme", "http"), (":path", method),
            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"),
        ])
        self._sock.sendall(PREFACE + _frame(SETTINGS, 0, 0)
                           + _frame(HEADERS, END_HEADERS, STREAM, headers))
        sent = 0
        while sent < len(message) or not message:
            room = min(self._max_frame, self._conn_window, self._stream_window)
            if room <= 0:
                self.step()  # wait for WINDOW_UPDATE or SETTINGS
                continue
            chunk = message[sent:sent + room]
            sent += len(chunk)
            last = sent >= len(message)
            self._sock.sendall(_frame(DATA, END_STREAM if last else 0, STREAM, chunk))
            self._conn_window -= len(chunk)
            self._stream_window -= len(chunk)
            if last:
                return

    def step(self) -> None:
        """Read and handle one frame."""
        kind, flags, stream, payload = self._reader.frame()
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack("!HI", payload[i:i + 6])
                if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                    self._stream_window += value - self._initial_window
                    self._initial_window = value
                elif ident == SETTINGS_MAX_FRAME_SIZE:
                    self._max_frame = value
            self._sock.sendall(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            # A graceful GOAWAY names the last stream the server will still finish: if that
            # includes ours, the answer is coming (an agent shutting down completes its calls).
            last_stream = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF if len(payload) >= 4 else 0
            if last_stream < STREAM:
                raise RpcFailure("UNAVAILABLE", "the agent is shutting down")
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack("!I", payload[:4])[0] & 0x7FFFFFFF
            if stream == 0:
                self._conn_window += increment
            elif stream == STREAM:
                self._stream_window += increment
        elif stream != STREAM:
            return
        elif kind == RST_STREAM:
            raise RpcFailure("INTERNAL", "the agent reset the call")
        elif kind == DATA:
            self.body += _strip_padding(flags, payload, headers=False)
            if payload:  # give the window back, so a large answer cannot stall
                update = struct.pack("!I", len(payload))
                self._sock.sendall(_frame(WINDOW_UPDATE, 0, 0, update)
                                   + _frame(WINDOW_UPDATE, 0, STREAM, update))
        elif kind in (HEADERS, CONTINUATION):
            self._block += _strip_padding(flags, payload, headers=kind == HEADERS)
            if flags & END_HEADERS:
                try:
                    self.fields.update(self._decoder.decode(self._block))
                except HpackError as exc:
                    raise RpcFailure("INTERNAL", f"bad headers from the agent: {exc}") from None
                self._block = b""
        if stream == STREAM and flags & END_STREAM and kind in (DATA, HEADERS):
            self._ending = True
        if self._ending and not self._block:  # END_STREAM, and any CONTINUATION is in
            self.done = True


def unary_call(socket_path: str, method: str, request: bytes, timeout: float) -> bytes:
    """Send one protobuf-encoded request to `method` (e.g. /overlay.cni.v1.Cni/Add)."""
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise RpcFailure("UNAVAILABLE", f"{exc.strerror or exc} ({socket_path})") from None
        call = _Call(sock, deadline)
        try:
            call.send_request(method, b"\x00" + struct.pack("!I", len(request)) + request, timeout)
            while not call.done:
                call.step()
        except OSError as exc:  # reset, broken pipe, a send that timed out
            raise RpcFailure("UNAVAILABLE", f"the connection to the agent failed: {exc}") from None
    finally:
        sock.close()
    status = call.fields.get("grpc-status", "")
    if status != "0":
        raise RpcFailure(f"grpc-status {status or 'missing'}", call.fields.get("grpc-message", ""))
    body = call.body
    if len(body) < 5 or body[0] != 0:
        raise RpcFailure("INTERNAL", "malformed gRPC message from the agent")
    return body[5:5 + int.from_bytes(body[1:5], "big")]
