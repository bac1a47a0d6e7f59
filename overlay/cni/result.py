"""CNI result objects, in the shape of the netconf's cniVersion.

0.1.0 and 0.2.0 have the old `ip4`/`ip6` shape; 0.3.x and later list `interfaces` and `ips`
that point at them by index; 1.0.0 dropped the per-IP `version` field; 1.1.0 added an
interface's `mtu`. When we are not the first plugin of a chain, our interfaces, addresses and
routes are appended to the `prevResult` we were given, as the spec requires.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overlay.ipam.allocator import Assigned
from overlay.model import Route


@dataclass(frozen=True)
class Attachment:
    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    netns: str
    addresses: Sequence[Assigned]
    routes: Sequence[Route]
    mtu: int


def _route(r: Route) -> dict[str, str]:
    item = {"dst": str(r.dst)}
    if r.gw is not None:
        item["gw"] = str(r.gw)
    return item


def _legacy(version: str, a: Attachment) -> dict[str, Any]:
    result: dict[str, Any] = {"cniVersion": version}
    for family, key in ((4, "ip4"), (6, "ip6")):
        first = next((x for x in a.addresses if x.address.version == family), None)
        if first is None:
            continue
        section: dict[str, Any] = {"ip": str(first.address)}
        if first.gateway is not None:
            section["gateway"] = str(first.gateway)
        routes = [_route(r) for r in a.routes if r.dst.version == family]
        if routes:
            section["routes"] = routes
        result[key] = section
    result["dns"] = {}
    return result


def build_result(version: str, a: Attachment,
                 prev_result: dict[str, Any] | None = None,
                 dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """`dns` is the netconf's; a prevResult's DNS, if it has one, is kept (the earlier plugin
    of the chain said it first)."""
    if version in ("0.1.0", "0.2.0"):
        legacy = _legacy(version, a)
        legacy["dns"] = dict(dns or {})
        return legacy
    base: dict[str, Any] = copy.deepcopy(prev_result) if prev_result else {}
    interfaces = list(base.get("interfaces") or [])
    container_index = len(interfaces) + 1
    container: dict[str, Any] = {"name": a.ifname, "mac": a.mac, "sandbox": a.netns}
    if version == "1.1.0":
        container["mtu"] = a.mtu  # interface `mtu` arrived with spec 1.1.0
    interfaces += [{"name": a.host_ifname, "mac": a.host_mac}, container]
    ips = list(base.get("ips") or [])
    for x in a.addresses:
        ip: dict[str, Any] = {"address": str(x.address), "interface": container_index}
        if x.gateway is not None:
            ip["gateway"] = str(x.gateway)
        if version.startswith("0."):
            ip = {"version": str(x.address.version), **ip}
        ips.append(ip)
    result: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    routes = list(base.get("routes") or []) + [_route(r) for r in a.routes]
    if routes:
        result["routes"] = routes
    result["dns"] = base.get("dns") or dict(dns or {})
    return result


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result).encode()
