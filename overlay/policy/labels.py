"""Endpoint labels, checked as Kubernetes checks them.

A key is an optional DNS-subdomain prefix and a name: `app`, `example.com/tier`. A name and a
value are at most 63 characters of [A-Za-z0-9_.-] that begin and end alphanumeric; a value may
be empty. The same rules as Kubernetes, so a label a kubelet or an operator used there is
accepted here unchanged, and a selector written for one cluster means the same thing here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

Labels = Mapping[str, str]

# The label set attached to a container by Kubernetes for its namespace (CNI's K8S_POD_NAMESPACE).
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

MAX_LABELS = 64  # a record is untrusted input: bound what one container can make agents match
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?"
_PREFIX = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def short(value: object, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters: messages quote untrusted input, not all of it."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit - 3]) + "..."
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python will print
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def key_problem(key: object) -> str | None:
    """Why `key` is not a label key, or None when it is one."""
    if not isinstance(key, str):
        return f"a label key must be a string, got {type(key).__name__}"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        return (f"label key {short(key)}: the prefix before '/' must be a DNS subdomain "
                f"(lower case, at most 253 characters)")
    if not _NAME.fullmatch(name):
        return (f"label key {short(key)}: the name must be 1-63 characters of A-Z a-z 0-9 _ . -, "
                f"beginning and ending with a letter or digit")
    return None


def value_problem(value: object) -> str | None:
    """Why `value` is not a label value, or None when it is one (the empty value is one)."""
    if not isinstance(value, str):
        return f"a label value must be a string, got {type(value).__name__}"
    if value and not _NAME.fullmatch(value):
        return (f"label value {short(value)}: at most 63 characters of A-Z a-z 0-9 _ . -, "
                f"beginning and ending with a letter or digit")
    return None


def labels_problem(labels: object) -> str | None:
    """Why `labels` is not a label set (a mapping of valid keys to valid values), or None."""
    if not isinstance(labels, Mapping):
        return f"labels must be an object of key: value, got {type(labels).__name__}"
    if len(labels) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels, got {len(labels)}"
    for key, value in labels.items():
        problem = key_problem(key) or value_problem(value)
        if problem:
            return problem
    return None
