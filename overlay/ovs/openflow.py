"""A persistent OpenFlow 1.4 channel to one bridge, for flow bundles.

`ovs-ofctl --bundle add-flows` costs 30-50 ms here per call: a process start, a new connection,
and a table-features request that makes ovs-vswitchd describe all 255 tables before every
flow mod. An event that changes two rules should not pay that. This channel keeps one
connection to the bridge's management socket and sends a bundle as OPEN, ADD_MESSAGE per flow
mod and a barrier. ovs-vswitchd checks each flow mod as it is added and commits whatever was
added without error, so the commit (or, if any add was refused, a discard) is sent only after
the barrier's reply: all or nothing, for one more round trip of a millisecond.

A big bundle (the whole table, 100,000 rules at 50,000 remote endpoints) is encoded and sent
in chunks: ovs-vswitchd checks the flow mods of one chunk on the other core while we encode
the next, where encoding everything first made the two take turns (and held every encoded
message in memory at once). Between chunks, whatever the switch said so far is read: a refused
flow mod stops the sending early, and the switch never waits on a full socket for us.

The flow mods come from ofencode.py, which encodes rule values (flow.py) in the vocabulary
flows.py uses; anything else raises Unsupported and the caller falls back to ovs-ofctl, which
understands everything.
A rule that cannot be encoded is found before anything is sent when the bundle fits in one
chunk (every event's bundle), and otherwise before the commit: the open bundle is discarded
and the switch's table is unchanged either way.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from overlay.errors import CniError, Code
from overlay.ovs.flow import ADD, Actions, Flow, Identity, Match, Op
from overlay.ovs.meters import ADD as METER_ADD
from overlay.ovs.meters import METER_EXISTS, METER_MOD_FAILED, MODIFY, Meter, meter_mod
from overlay.ovs.ofencode import (
    Encoder,
    RuleKey,
    Unsupported,
    encode_delete_cookie,
    encode_match,
)

__all__ = ["Channel", "Unsupported"]

log = logging.getLogger(__name__)

VERSION = 0x05  # OpenFlow 1.4
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY = 0, 1, 2, 3
BARRIER_REQUEST, BARRIER_REPLY, BUNDLE_CONTROL, BUNDLE_ADD = 20, 21, 33, 34
OPEN_REQUEST, COMMIT_REQUEST, COMMIT_REPLY, DISCARD_REQUEST = 0, 4, 5, 6
MULTIPART_REQUEST, MULTIPART_REPLY, FLOW_STATS, AGGREGATE, REPLY_MORE = 18, 19, 1, 2, 1
ALL_TABLES, ANY = 0xFF, 0xFFFFFFFF
ATOMIC_ORDERED = 0x3
# Flow mods per write. Small enough that the switch starts on the first ones at once, large
# enough that a write is not mostly system-call overhead (~200 KB).
CHUNK = 2000
T = TypeVar("T")


class Channel:
    """One connection to a bridge; `apply` sends one atomic bundle. Not thread-safe: the
    dataplane calls it under its apply lock."""

    def __init__(self, *, rundir: str, bridge: str, timeout: float = 10.0,
                 meters: tuple[Meter, ...] = ()) -> None:
        self._path = os.path.join(rundir, bridge + ".mgmt")
        self._timeout = timeout
        self._meters = meters  # put in on every new connection, before any rule (meters.py)
        self._sock: socket.socket | None = None
        self._xid = 0
        self._bundle = 0
        self._lock = threading.Lock()

    def apply(self, ops: Sequence[Op], cookie: int, delete_cookies: tuple[int, ...] = ()) -> None:
        """ops: add, modify_strict, delete_strict; then, if given, delete every rule whose cookie is
        one of `delete_cookies` (after the ops, in the same bundle). Raises Unsupported with
        the switch's table unchanged, and CniError if the switch refuses the bundle or cannot
        be reached (after one reconnect: `ops` is then encoded again, hence a sequence)."""
        self._bundle_of(lambda: ops, cookie, delete_cookies)

    def add_all(self, rules: Mapping[Identity, Actions], cookie: int,
                delete_cookies: tuple[int, ...] = ()) -> None:
        """apply() of an add for every identity -> actions of `rules` (a whole table: the
        operations are made as they are encoded, not listed first)."""
        self._bundle_of(lambda: (Op(ADD, identity, actions) for identity, actions in rules.items()),
                        cookie, delete_cookies)

    def _bundle_of(self, ops: Callable[[], Iterable[Op]], cookie: int,
                   delete_cookies: tuple[int, ...]) -> None:
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._send_bundle(ops(), cookie, delete_cookies)
                except OSError as exc:  # connection gone (vswitchd restarted): once more
                    self.close()
                    if attempt == 2:
                        raise CniError(Code.OVS_FAILURE, f"cannot reach {self._path}",
                                       str(exc)) from None

    def holds_exactly(self, rules: Mapping[Identity, Actions]) -> tuple[bool, set[int]]:
        """Does the switch hold exactly `rules` (identity -> actions), cookies aside? And the
        cookies its rules carry. One dump of the table, compared without decoding: every rule
        reported is digested as Encoder.key digests ours (table, priority, match and
        instructions as bytes; we encode in the order the switch reports), and the two sets
        of digests and the counts must be equal. Our rules are digested while the switch
        writes its answer. Raises Unsupported if one of `rules` cannot be encoded."""
        return self._retrying(lambda: self._holds_exactly(rules))

    def holds(self, rule: Flow) -> bool:
        """Does the switch hold this rule (table, priority, match and actions, as bytes)?
        One filtered dump: the rules of its table at least as specific as its match."""
        def probe() -> bool:
            wanted = Encoder(0).key(rule.identity, rule.actions)
            found: list[RuleKey] = []
            self._read_replies(self._send_request(FLOW_STATS, rule.table, rule.match),
                               self._entries(lambda table, priority, _, content:
                                             found.append((table, priority, content))))
            return wanted in found
        return self._retrying(probe)

    def count(self) -> int:
        """How many rules the switch holds (an aggregate request: no rule is transferred)."""
        def aggregate() -> int:
            counted: list[int] = []

            def take(body: bytes) -> bool:  # after the multipart header: packets, bytes, rules
                counted.append(struct.unpack_from("!I", body, 8 + 16)[0])
                return True
            self._read_replies(self._send_request(AGGREGATE, ALL_TABLES, Match()), take)
            return counted[0]
        return self._retrying(aggregate)

    def answers(self) -> bool:
        try:
            self.count()
            return True
        except CniError:
            return False

    def replace(self, rules: Mapping[Identity, Actions], cookie: int) -> None:
        """Every rule of `rules` added under `cookie`, and every rule of another cookie the
        switch showed deleted, in one bundle; Unsupported if a rule cannot be said or the
        switch then holds rules of ours' cookie that we do not want (ovs-ofctl then)."""
        _, cookies = self.holds_exactly(rules)
        self.add_all(rules, cookie, delete_cookies=tuple(sorted(cookies - {cookie})))
        if self.count() != len(rules):
            raise Unsupported("the switch holds rules under our cookie that we do not want")

    def _retrying(self, call: Callable[[], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    return call()
                except OSError as exc:  # connection gone (vswitchd restarted): once more
                    self.close()
                    if attempt == 2:
                        raise CniError(Code.OVS_FAILURE, f"cannot reach {self._path}",
                                       str(exc)) from None
        raise AssertionError("unreachable")

    def _send_request(self, kind: int, table: int, match: Match) -> int:
        """A multipart request (flow stats or aggregate) of `table` and `match`; its xid."""
        sock = self._connect()
        xid = self._next_xid()
        request = (struct.pack("!HH4xB3xII4xQQ", kind, 0, table, ANY, ANY, 0, 0)
                   + encode_match(match))
        sock.sendall(struct.pack("!BBHI", VERSION, MULTIPART_REQUEST, 8 + len(request), xid)
                     + request)
        return xid

    def _read_replies(self, xid: int, take: Callable[[bytes], bool]) -> None:
        """`take` gets each reply's body to request `xid` and says whether it was the last."""
        assert self._sock is not None
        errors = self._until(self._sock, lambda reply, reply_xid, body: reply == MULTIPART_REPLY
                             and reply_xid == xid and take(body), stop_on_error_xid=xid)
        if errors:
            raise CniError(Code.OVS_FAILURE, "the switch refused to list its rules",
                           "; ".join(errors))

    @staticmethod
    def _entries(each: Callable[[int, int, int, bytes], object]) -> Callable[[bytes], bool]:
        """A reader of flow stats replies: each(table, priority, cookie, match +
        instructions as bytes) for every rule listed."""
        def take(body: bytes) -> bool:
            flags, offset = struct.unpack_from("!H", body, 2)[0], 8
            while offset < len(body):  # ofp_flow_stats entries; the match starts at 48
                length, table = struct.unpack_from("!HB", body, offset)
                each(table, struct.unpack_from("!H", body, offset + 12)[0],
                     struct.unpack_from("!Q", body, offset + 24)[0],
                     body[offset + 48:offset + length])
                offset += length
            return not flags & REPLY_MORE
        return take

    def _holds_exactly(self, rules: Mapping[Identity, Actions]) -> tuple[bool, set[int]]:
        found: set[int] = set()
        cookies: set[int] = set()
        count = 0

        def each(table: int, priority: int, cookie: int, content: bytes) -> None:
            nonlocal count
            found.add(hash((table, priority, content)))
            cookies.add(cookie)
            count += 1
        xid = self._send_request(FLOW_STATS, ALL_TABLES, Match())
        encoder = Encoder(0)
        try:  # while the switch writes its answer
            wanted = {hash(encoder.key(identity, actions)) for identity, actions in rules.items()}
        except Unsupported:
            self.close()  # the switch's answer is on its way: leave no part of it unread
            raise
        self._read_replies(xid, self._entries(each))
        return count == len(rules) and found == wanted, cookies

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
            for meter in self._meters:
                self._put_meter(sock, meter)
            self._sock = sock
        return self._sock

    def _put_meter(self, sock: socket.socket, meter: Meter) -> None:
        """Add the meter, or modify it if the switch has it (its rate may have changed). A
        switch that refuses it (a kernel datapath without meters) is logged, not fatal: the
        rules must go in all the same."""
        refused = self._meter_mod(sock, METER_ADD, meter)
        if refused == (METER_MOD_FAILED, METER_EXISTS):
            refused = self._meter_mod(sock, MODIFY, meter)
        if refused is not None:
            log.error("the switch refused meter %d (OpenFlow error type %d code %d): rules "
                      "that name it send to the controller unmetered", meter.meter_id, *refused)

    def _meter_mod(self, sock: socket.socket, command: int, meter: Meter
                   ) -> tuple[int, int] | None:
        """Send one meter mod and a barrier; the error (type, code) it got, if any."""
        xid, barrier = self._next_xid(), self._next_xid()
        sock.sendall(meter_mod(command, meter, xid)
                     + struct.pack("!BBHI", VERSION, BARRIER_REQUEST, 8, barrier))
        refused: list[tuple[int, int]] = []

        def done(kind: int, reply_xid: int, body: bytes) -> bool:
            if kind == ERROR and reply_xid == xid:
                refused.append(struct.unpack_from("!HH", body))
            return kind == BARRIER_REPLY and reply_xid == barrier
        self._until(sock, done)
        return refused[0] if refused else None

    def _chunks(self, ops: Iterable[Op], cookie: int,
                delete_cookies: tuple[int, ...]) -> Iterator[bytes]:
        """The bundle's ADD_MESSAGEs, CHUNK flow mods at a time, encoded as they are asked for."""
        encoder, out = Encoder(cookie), []
        for kind, identity, actions in ops:
            out.append(self._wrap(encoder.flow_mod(kind, identity, actions, self._next_xid())))
            if len(out) == CHUNK:
                yield b"".join(out)
                out = []
        out += [self._wrap(encode_delete_cookie(c, self._next_xid())) for c in delete_cookies]
        yield b"".join(out)

    def _wrap(self, inner: bytes) -> bytes:
        # The ADD_MESSAGE carries the xid of the message inside it.
        return (struct.pack("!BBH", VERSION, BUNDLE_ADD, 16 + len(inner)) + inner[4:8]
                + struct.pack("!IHH", self._bundle, 0, ATOMIC_ORDERED) + inner)

    def _send_bundle(self, ops: Iterable[Op], cookie: int,
                     delete_cookies: tuple[int, ...]) -> None:
        sock = self._connect()
        self._bundle = (self._bundle + 1) & 0xFFFFFFFF
        chunks = self._chunks(ops, cookie, delete_cookies)
        first = next(chunks)  # an Unsupported rule in it: nothing has been sent
        # A whole table takes the switch seconds to check and commit: the timeout applies to
        # each read and write, and a chunk's worth of flow mods is checked well within it.
        sock.settimeout(max(self._timeout, 2 * CHUNK / 5000))
        sock.sendall(self._control(OPEN_REQUEST) + first)
        errors: list[str] = []
        try:
            for chunk in chunks:
                errors += self._drain(sock)
                if errors:
                    break
                sock.sendall(chunk)
        except Unsupported:
            self._discard(sock)
            raise
        barrier_xid = self._next_xid()
        sock.sendall(struct.pack("!BBHI", VERSION, BARRIER_REQUEST, 8, barrier_xid))
        errors += self._until(sock, lambda kind, xid, body: kind == BARRIER_REPLY
                              and xid == barrier_xid)
        if errors:
            self._discard(sock)
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

    def _discard(self, sock: socket.socket) -> None:
        discard = self._control(DISCARD_REQUEST)
        xid = struct.unpack_from("!I", discard, 4)[0]
        sock.sendall(discard)
        self._until(sock, lambda kind, reply_xid, body: reply_xid == xid)

    def _drain(self, sock: socket.socket) -> list[str]:
        """Read what the switch has said so far without waiting (errors, echo requests)."""
        errors: list[str] = []
        while select.select([sock], [], [], 0)[0]:
            self._until(sock, lambda kind, xid, body: True, errors=errors)
        return errors

    def _until(self, sock: socket.socket, done: Callable[[int, int, bytes], bool],
               stop_on_error_xid: int | None = None, errors: list[str] | None = None
               ) -> list[str]:
        """Read messages until `done` says so; answer echoes; collect errors."""
        errors = [] if errors is None else errors
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
        header = read_exactly(sock, 8)
        version, kind, length, xid = struct.unpack("!BBHI", header)
        return (version, kind, length, xid), read_exactly(sock, length - 8)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from an OpenFlow connection (also the restart watcher's, liveness.py)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the switch closed the OpenFlow connection")
        data += chunk
    return data
