"""What the runtime asks for beyond the netconf: a MAC, specific IPs, the attachments to keep.

Three channels carry such requests, and each is read here only:

  CNI_ARGS             "IgnoreUnknown=1;IP=10.0.0.9;MAC=02:..."   (the oldest convention)
  args.cni             {"ips": [...], "mac": "..."}               in the netconf
  runtimeConfig        {"ips": [...], "mac": "..."}               capabilities `ips`, `mac`

For a MAC the most specific wins, as the reference `tuning` plugin orders them: args.cni, then
runtimeConfig, then CNI_ARGS. Requested IPs are gathered from all three (host-local's order);
one that the netconf itself never hands out (a network, broadcast or gateway address, or one in
`ipam.exclude`) is refused with 108, as host-local refuses a requested gateway.
CNI_ARGS keys other than IP, MAC and IgnoreUnknown are an error unless IgnoreUnknown is set:
kubelet sets it and adds K8S_POD_* keys.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from overlay.cni.netconf import CniEnv, NetConf
from overlay.errors import CniError, Code
from overlay.model import Address

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_KNOWN_ARGS = ("IP", "MAC", "IgnoreUnknown")


def parse_cni_args(raw: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep or "=" in value or not key:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS: {item!r} is not a KEY=VALUE pair")
        pairs[key] = value
    ignore = pairs.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(k for k in pairs if k not in _KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS: unknown keys {', '.join(unknown)}",
                       "add IgnoreUnknown=1 to pass keys meant for other plugins")
    return pairs


def _section(conf: NetConf, *path: str) -> dict[str, Any]:
    node: Any = conf.raw
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def requested_mac(conf: NetConf, env: CniEnv) -> str | None:
    candidates = [_section(conf, "args", "cni").get("mac"),
                  _section(conf, "runtimeConfig").get("mac"),
                  parse_cni_args(env.args).get("MAC")]
    for mac in candidates:
        if mac is None:
            continue
        if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
            raise CniError(Code.INVALID_NETCONF,
                           f"requested MAC {mac!r} is not a unicast address like 02:00:00:00:00:01")
        return mac.lower()
    return None


def _as_address(value: Any, where: str) -> Address:
    try:
        if isinstance(value, str):
            return ipaddress.ip_interface(value).ip
    except ValueError:
        pass
    raise CniError(Code.INVALID_NETCONF,
                   f"{where}: {value!r} is not an IP address (optionally with /prefix)")


def requested_ips(conf: NetConf, env: CniEnv) -> list[Address]:
    out: list[Address] = []
    cni_args_ip = parse_cni_args(env.args).get("IP", "")
    for value in filter(None, cni_args_ip.split(",")):
        out.append(_as_address(value, "CNI_ARGS IP"))
    for where, section in (("args.cni.ips", _section(conf, "args", "cni")),
                           ("runtimeConfig.ips", _section(conf, "runtimeConfig"))):
        ips = section.get("ips", [])
        if not isinstance(ips, list):
            raise CniError(Code.INVALID_NETCONF, f"{where} must be a list of addresses")
        out.extend(_as_address(v, where) for v in ips)
    unique: list[Address] = []
    for ip in out:
        if ip not in unique:
            unique.append(ip)
    for ip in unique:
        why = _never_handed_out(ip, conf)
        if why:
            raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE,
                           f"requested address {ip} is {why}, which is never handed out")
    return unique


def _never_handed_out(ip: Address, conf: NetConf) -> str | None:
    """Why the netconf itself keeps `ip` from containers (docs/cni-reference.md: network,
    broadcast and gateway addresses are never used; exclude), if it does. Only the built-in
    IPAM has ranges here."""
    for rng in conf.ipam.ranges:
        if ip not in rng.subnet:
            continue
        if ip == rng.subnet.network_address:
            return f"the network address of {rng.subnet}"
        if rng.subnet.version == 4 and ip == rng.subnet.broadcast_address:
            return f"the broadcast address of {rng.subnet}"
        if ip == rng.gateway:
            return f"the gateway of {rng.subnet}"
    for net in conf.ipam.exclude:
        if ip in net:
            return f"in ipam.exclude ({net})"
    return None


def valid_attachments(conf: NetConf) -> set[tuple[str, str]] | None:
    """GC's keep-list: (containerID, ifname) pairs; None when the runtime sent none at all."""
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):  # new name, then old
        if key in conf.raw:
            items = conf.raw[key] or []  # null means: no attachment is valid
            if not isinstance(items, list):
                raise CniError(Code.INVALID_NETCONF, f"{key} must be a list")
            keep = set()
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                        or not isinstance(item.get("ifname"), str):
                    raise CniError(Code.INVALID_NETCONF,
                                   f"{key}: each entry needs containerID and ifname, got {item!r}")
                keep.add((item["containerID"], item["ifname"]))
            return keep
    return None
