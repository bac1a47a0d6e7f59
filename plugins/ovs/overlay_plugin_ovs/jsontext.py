"""JSON in and out without importing `json` (which imports `re`, and with it `enum`).

Why: the plugin is a process per CNI call, and on a loaded 2-core machine `import json`
alone added about 20 ms to its start. The parsing itself is CPython's own C scanner
(`_json.make_scanner`, what `json.loads` runs too), so valid JSON parses exactly as
`json.loads` parses it. Anything it refuses goes to `json.loads` after all, so error messages
stay the standard ones and odd encodings (a BOM, UTF-16) are handled as before; that import is
paid only on the error path.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """The attributes _json.make_scanner reads from a JSONDecoder, with json's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder-like
_SPACE = " \t\n\r"


def loads(data: bytes) -> Any:
    """json.loads(data): the same value, or the same exception."""
    try:
        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip(_SPACE))
        value, end = _scan(text, start)
        if text[end:].strip(_SPACE) or text.startswith("\ufeff"):
            raise ValueError("not plain JSON")
        return value
    except (ValueError, StopIteration, SystemError):
        # The error path: let json say what is wrong, in its words. (SystemError: on a syntax
        # error the C scanner looks for json.decoder.JSONDecodeError in sys.modules only, and
        # fails that way when json was never imported.)
        import json

        return json.loads(data)


def dumps(value: Any) -> str:
    """json.dumps(value) for the str/int/bool/None/list/dict values the plugin prints."""
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
