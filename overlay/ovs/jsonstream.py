"""OVSDB's JSON-RPC stream parsed by CPython's C JSON decoder instead of python-ovs's lexer.

python-ovs parses every message from ovsdb-server with `ovs.json.Parser`, which is a C
extension (`ovs._json`) only when python-ovs was built against libopenvswitch; the build from
PyPI has none, and its fallback lexes character by character in Python: 8.7 ms for one 2.8 KB
update of three Interface rows here (0.33 MB/s; `json.loads`: 0.19 ms). The agent's IDL thread
parses an update for every change ovs-vswitchd writes (ofports, link states, statistics of
every interface every 5 s), holding the GIL that the CNI calls need: with ten ADDs at once,
their ports' updates alone were tens of ms of it.

`StreamParser` keeps python-ovs's Parser interface (feed returns how many characters belong
to the current value, is_done, finish returns the value or an error text) and splits the
stream into values by scanning only strings and brackets (a regular expression, so in C too);
each complete value is then decoded by `json.loads`. A JSON-RPC message is an object, so a
value ends where its brackets balance. `install` makes python-ovs use it unless python-ovs
has its C parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

import ovs.json

# python-ovs's own parser (what install replaces), for comparison in the tests.
PYTHON_PARSER: Any = ovs.json.Parser

# A complete string (escapes included), a lone quote (a string not complete yet), a bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|"|[{}\[\]]', re.DOTALL)


class StreamParser:
    """python-ovs's `ovs.json.Parser`, for the values of a JSON-RPC stream."""

    def __init__(self, check_trailer: bool = False) -> None:
        # check_trailer (ovs.json.from_string): the whole text is one value, given at once.
        self._whole = check_trailer
        self._text = ""
        self._scanned = 0  # where scanning for the value's end goes on
        self._depth = 0
        self._end: int | None = None  # the value's end in _text, once complete

    def feed(self, s: str) -> int:
        """Take text; returns how much of `s` belongs to the current value (all of it until
        the value is complete: the rest is the next value's)."""
        if self._end is not None:
            return 0
        base = len(self._text)
        self._text += s
        if self._whole:
            return len(s)
        for m in _TOKEN.finditer(self._text, self._scanned):
            token = m.group()
            if token == '"':  # a string cut by the end of what has arrived: wait for more
                self._scanned = m.start()
                return len(s)
            if token[0] == '"':
                continue
            self._depth += 1 if token in "{[" else -1
            if self._depth <= 0:
                self._end = m.end()
                return self._end - base
        self._scanned = len(self._text)
        return len(s)

    def is_done(self) -> bool:
        return self._end is not None

    def finish(self) -> Any:
        """The value, or (as python-ovs's parser) a text saying what is wrong with it."""
        if self._whole:
            text = self._text
        elif self._end is None:
            return "unexpected end of input" if self._text.strip() else "empty input stream"
        else:
            text = self._text[:self._end]
        try:
            return json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            return f"syntax error: {exc}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def install() -> None:
    """Make python-ovs parse with StreamParser, unless it has its C parser. Idempotent."""
    if ovs.json.PARSER == ovs.json.PARSER_PY:
        ovs.json.Parser = StreamParser
