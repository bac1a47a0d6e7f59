"""Delegating address management to another IPAM plugin (host-local, static, dhcp, ...).

As the CNI spec's delegation section says: the plugin named by `ipam.type` is looked up in
CNI_PATH, gets the complete netconf we were given (not just the `ipam` section) on stdin and the
same CNI_* environment with only CNI_COMMAND changed, and answers in the netconf's version. Its
error objects are passed through unchanged, so the runtime sees the IPAM plugin's own code.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from overlay.cni.netconf import CniEnv, NetConf
from overlay.errors import CniError, Code
from overlay.ipam.allocator import Assigned
from overlay.model import Address, Route

TIMEOUT = 60.0


@dataclass(frozen=True)
class DelegatedLease:
    assigned: list[Assigned]
    routes: tuple[Route, ...]


def find_plugin(plugin: str, cni_path: str) -> str:
    for directory in filter(None, cni_path.split(":")):
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(Code.INVALID_NETCONF, f"IPAM plugin {plugin!r} was not found in CNI_PATH",
                   f"CNI_PATH={cni_path!r}")


def run(command: str, conf: NetConf, env: CniEnv, *, container_id: str | None = None,
        ifname: str | None = None) -> dict[str, Any] | None:
    """Execute the IPAM plugin; return its result object (None when it printed nothing)."""
    binary = find_plugin(conf.ipam.type, env.path)
    child_env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id or env.container_id,
                 "CNI_NETNS": env.netns, "CNI_IFNAME": ifname or env.ifname,
                 "CNI_ARGS": env.args, "CNI_PATH": env.path,
                 "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    try:
        proc = subprocess.run([binary], input=conf.source, env=child_env, capture_output=True,
                              timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(Code.DELEGATE_FAILED, f"IPAM plugin {conf.ipam.type} did not run",
                       str(exc)) from None
    out = proc.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            raise CniError(Code(parsed["code"]) if parsed["code"] in Code._value2member_map_
                           else Code.DELEGATE_FAILED,
                           f"IPAM plugin {conf.ipam.type}: {parsed.get('msg', '')}",
                           str(parsed.get("details", "")))
        raise CniError(Code.DELEGATE_FAILED, f"IPAM plugin {conf.ipam.type} failed {command}",
                       (proc.stderr or proc.stdout).decode(errors="replace").strip()[:2000])
    if not out:
        return None
    if not isinstance(parsed, dict):
        raise CniError(Code.DELEGATE_FAILED,
                       f"IPAM plugin {conf.ipam.type} printed something that is not a result")
    return parsed


def _gateway(value: Any) -> Address | None:
    return ipaddress.ip_address(value) if isinstance(value, str) and value else None


def parse_result(result: dict[str, Any]) -> DelegatedLease:
    """Addresses and routes of an IPAM result, whatever its version's shape."""
    assigned: list[Assigned] = []
    routes: list[Route] = []
    try:
        if "ips" in result:  # 0.3.0 and later
            for ip in result.get("ips") or []:
                assigned.append(Assigned(ipaddress.ip_interface(ip["address"]),
                                         _gateway(ip.get("gateway"))))
            raw_routes = result.get("routes") or []
        else:  # 0.1.0 / 0.2.0: ip4 / ip6, routes inside
            raw_routes = []
            for family in ("ip4", "ip6"):
                section = result.get(family)
                if isinstance(section, dict):
                    assigned.append(Assigned(ipaddress.ip_interface(section["ip"]),
                                             _gateway(section.get("gateway"))))
                    raw_routes += section.get("routes") or []
        for r in raw_routes:
            routes.append(Route(ipaddress.ip_network(r["dst"], strict=False),
                                _gateway(r.get("gw"))))
    except (KeyError, TypeError, ValueError) as exc:
        raise CniError(Code.DELEGATE_FAILED, "the IPAM plugin's result could not be read",
                       f"{type(exc).__name__}: {exc}") from None
    if not assigned:
        raise CniError(Code.DELEGATE_FAILED, "the IPAM plugin returned no address")
    return DelegatedLease(assigned, tuple(routes))
