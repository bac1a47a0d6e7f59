"""CNI result objects, in the shape of the netconf's cniVersion.

0.1.0 and 0.2.0 have the old `ip4` shape; 0.3.x and later list `interfaces` and `ips` that
point at them by index; 1.0.0 dropped the per-IP `version` field.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from overlay.cni.netconf import Address, Route


@dataclass(frozen=True)
class Attachment:
    host_ifname: str
    host_mac: str
    ifname: str
    mac: str
    netns: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: Address | None
    routes: tuple[Route, ...]
    mtu: int


def _routes(routes: tuple[Route, ...]) -> list[dict[str, str]]:
    out = []
    for r in routes:
        item = {"dst": str(r.dst)}
        if r.gw is not None:
            item["gw"] = str(r.gw)
        out.append(item)
    return out


def build_result(version: str, a: Attachment) -> dict[str, Any]:
    family = "ip4" if a.address.version == 4 else "ip6"
    if version in ("0.1.0", "0.2.0"):
        ipconf: dict[str, Any] = {"ip": str(a.address)}
        if a.gateway is not None:
            ipconf["gateway"] = str(a.gateway)
        if a.routes:
            ipconf["routes"] = _routes(a.routes)
        return {"cniVersion": version, family: ipconf, "dns": {}}
    ip: dict[str, Any] = {"address": str(a.address), "interface": 1}
    if a.gateway is not None:
        ip["gateway"] = str(a.gateway)
    if version.startswith("0."):
        ip = {"version": str(a.address.version), **ip}
    result: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": [
            {"name": a.host_ifname, "mac": a.host_mac},
            {"name": a.ifname, "mac": a.mac, "mtu": a.mtu, "sandbox": a.netns},
        ],
        "ips": [ip],
        "dns": {},
    }
    if version != "1.1.0":
        del result["interfaces"][1]["mtu"]  # interface `mtu` arrived with spec 1.1.0
    if a.routes:
        result["routes"] = _routes(a.routes)
    return result


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result).encode()
