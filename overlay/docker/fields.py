"""Reading the fields of a libnetwork request: every body is untrusted, so each field is
checked for its type and form before it reaches etcd, OVS or the kernel, and a bad one is
refused with a message that names it."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from overlay.docker.protocol import DockerError

_ID_RE = re.compile(r"[0-9a-f]{12,64}")  # Docker's network and endpoint IDs (hex)
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def text(request: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = request.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DockerError(f"{key} must be a string, got {value!r}")
    if required and not value:
        raise DockerError(f"{key} is missing from the request")
    return value


def docker_id(request: dict[str, Any], key: str) -> str:
    value = text(request, key)
    if not _ID_RE.fullmatch(value):
        raise DockerError(f"{key} {value!r} is not a Docker ID (12 to 64 hex digits)")
    return value


def mapping(request: dict[str, Any], key: str) -> dict[str, Any]:
    value = request.get(key) or {}
    if not isinstance(value, dict):
        raise DockerError(f"{key} must be a JSON object, got {value!r}")
    return value


def items(request: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = request.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DockerError(f"{key} must be a list of objects")
    return value


def mac(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()) \
            or int(value[:2], 16) & 1:
        raise DockerError(f"{where} {value!r} is not a unicast MAC address like 02:42:0a:00:00:02")
    return value.lower()


def ipv4_interface(value: Any, where: str) -> ipaddress.IPv4Interface:
    """An IPv4 address with or without /prefix."""
    try:
        if isinstance(value, str):
            iface = ipaddress.ip_interface(value)
            if isinstance(iface, ipaddress.IPv4Interface):
                return iface
    except ValueError:
        pass
    raise DockerError(f"{where} {value!r} is not an IPv4 address (IPv6 is not supported by the "
                      "ovs driver)")


def ipv4_network(value: Any, where: str) -> ipaddress.IPv4Network:
    try:
        if isinstance(value, str):
            net = ipaddress.ip_network(value, strict=True)
            if isinstance(net, ipaddress.IPv4Network):
                return net
    except ValueError:
        pass
    raise DockerError(f"{where} {value!r} is not an IPv4 subnet like 10.0.0.0/24 (IPv6 is not "
                      "supported by the ovs driver)")
