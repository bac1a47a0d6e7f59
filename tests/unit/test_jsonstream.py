"""overlay/ovs/jsonstream.py against python-ovs's own (pure Python) parser: the same values
from the same JSON-RPC stream, however the stream is cut into reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ovs.json
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.ovs.jsonstream import PYTHON_PARSER, StreamParser


@contextmanager
def python_ovs_parser() -> Iterator[Any]:
    """python-ovs's own parser, put back for a while: it names itself through its module
    (ovs.json.Parser), which install() (run by any Ovsdb made before) points at ours."""
    saved = ovs.json.Parser
    ovs.json.Parser = PYTHON_PARSER
    try:
        yield PYTHON_PARSER
    finally:
        ovs.json.Parser = saved

# python-ovs refuses NUL in strings (OVSDB has none), so they are left out
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), texts)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=20)
messages = st.lists(st.dictionaries(texts, values, min_size=1, max_size=4), min_size=1,
                    max_size=4)


def parse_stream(text: str, cuts: list[int], parser: Any) -> list[Any]:
    """What python-ovs's jsonrpc.Connection.recv does with reads cut at `cuts`."""
    out: list[Any] = []
    pending, current = "", None
    reads = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    for chunk in reads:
        pending += chunk
        while pending:
            current = current or parser()
            pending = pending[current.feed(pending):]
            if current.is_done():
                out.append(current.finish())
                current = None
            else:
                break
    return out


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_the_same_values_as_python_ovs_however_the_stream_is_cut(msgs: list[dict[str, Any]],
                                                                  data: st.DataObject) -> None:
    text = "".join(json.dumps(m, ensure_ascii=data.draw(st.booleans()),
                              indent=data.draw(st.sampled_from([None, 1]))) for m in msgs)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=8)))
    cuts = [c for c in cuts if 0 < c < len(text)]
    assert parse_stream(text, cuts, StreamParser) == msgs
    with python_ovs_parser() as parser:
        assert parse_stream(text, cuts, parser) == msgs


def test_a_value_cut_inside_a_string_with_escapes_and_brackets_waits_for_the_rest() -> None:
    text = json.dumps({"a": 'x"}]\\{[', "b": [1, {"c": "\u00e9"}]})
    for cut in range(1, len(text)):
        assert parse_stream(text, [cut], StreamParser) == [json.loads(text)]


def test_bad_input_is_an_error_text_not_an_exception() -> None:
    for text in ('{"a": tru}', '{"a": 1,}', '{"a": NaN}', '{"a" 1}'):
        parser = StreamParser()
        parser.feed(text)
        assert parser.is_done()
        assert isinstance(parser.finish(), str)
    unfinished = StreamParser()
    unfinished.feed('{"a": [1, 2')
    assert not unfinished.is_done()
    assert unfinished.finish() == "unexpected end of input"


def test_from_string_mode_takes_any_value_and_refuses_a_trailer() -> None:
    whole = StreamParser(check_trailer=True)
    whole.feed('"just a string"')
    assert whole.finish() == "just a string"
    trailer = StreamParser(check_trailer=True)
    trailer.feed('{"a": 1} x')
    assert isinstance(trailer.finish(), str)
