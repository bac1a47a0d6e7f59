"""Parsing and validation of what the runtime hands us: the netconf (stdin) and CNI_* env vars.

Everything from the outside is checked here, before any of it reaches OVSDB, netlink or an etcd
key, and every refusal is a CniError whose message says which field is wrong and what would be
accepted. The result is a frozen dataclass the rest of the agent can trust, made of the ground
floor's types (overlay/model.py); the built-in allocator's `ipam` section is read by ipamconf.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from overlay.cni import ipamconf
from overlay.errors import CniError, Code
from overlay.model import (
    BUILTIN_IPAM,
    VNI_MAX,
    VNI_MIN,
    Address,
    IpamConfig,
    Network,
)

DEFAULT_BRIDGE = "br-int"
DEFAULT_AGENT_SOCKET = "/run/overlay/agent.sock"
# The versions whose result shape we produce (the plugin answers VERSION with this list).
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
NO_CONTAINER_COMMANDS = ("VERSION", "STATUS", "GC")  # called for a network, not an attachment

# The CNI spec's own pattern for network names and container IDs (matched in full: a trailing
# newline must not slip into an etcd key).
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
# '%' would make the kernel pick the name itself; control characters (C0, DEL, C1) the kernel
# would take, but they have no place in an OVSDB external_id, an etcd key or a log line.
_IFNAME_BAD = re.compile(r"[/:%\s\x00-\x1f\x7f-\x9f]")
# The plugin that is this network's "type": naming it as ipam.type would have the agent run the
# plugin as its own IPAM delegate, which calls the agent again for the same container and waits
# for the lock the first call holds (a hang until the delegate times out).
PLUGIN_TYPE = "ovs"

@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    vni: int
    bridge: str = DEFAULT_BRIDGE
    mtu: int | None = None
    agent_socket: str = DEFAULT_AGENT_SOCKET
    ipam: IpamConfig = IpamConfig(BUILTIN_IPAM)
    ip_masq: bool = True  # `ipMasq`: egress from the network is SNATed to the host's address
    dns: dict[str, Any] = field(default_factory=dict)  # returned in the result as given
    # `dhcpServers`: the addresses of the network's DHCP servers. Only a container holding one
    # of them may send DHCP server replies (UDP 67 -> 68, 547 -> 546); see _parse_dhcp_servers.
    dhcp_servers: tuple[Address, ...] = ()
    # `encrypted`: the network's VXLAN travels only inside WireGuard (docs/encryption.md).
    # None: the netconf does not say, and the agent's `encrypt_networks` default decides.
    encrypted: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: bytes = field(default=b"", compare=False, repr=False)  # stdin, for delegation

    @property
    def subnet(self) -> Network | None:
        ranges = self.ipam.ranges
        return ranges[0].subnet if ranges else None

    @property
    def subnets_text(self) -> str:
        """Every subnet of the built-in IPAM's ranges, the first first, comma-separated: what
        the network record says, so that other hosts check an endpoint's IPv6 addresses too
        (agent/verify.py); "" for a delegated IPAM."""
        return ",".join(dict.fromkeys(str(r.subnet) for r in self.ipam.ranges))

    @property
    def prev_result(self) -> dict[str, Any] | None:
        prev = self.raw.get("prevResult")
        return prev if isinstance(prev, dict) else None

    @property
    def gateway(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Network] | None:
        """The network's distributed gateway and its subnet: the gateway of the first IPv4
        range set (built-in IPAM only; IPv6 has no gateway, docs/cni-reference.md)."""
        for rset in self.ipam.range_sets:
            for rng in rset:
                if isinstance(rng.gateway, ipaddress.IPv4Address) and \
                        isinstance(rng.subnet, ipaddress.IPv4Network):
                    return rng.gateway, rng.subnet
        return None

    def at_least(self, version: str) -> bool:
        return _version_key(self.cni_version) >= _version_key(version)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: str = ""
    path: str = ""


def _invalid(msg: str) -> CniError:
    return CniError(Code.INVALID_NETCONF, msg)


def _require_int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    value = obj.get(key)
    # bool is an int in Python; `"vxlanID": true` must not read as VNI 1.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _invalid(f"{where}{key} must be an integer from {lo} to {hi}, got {value!r}")
    return value

def _parse_ipam(obj: Any) -> IpamConfig:
    if not isinstance(obj, dict):
        raise _invalid("ipam must be an object such as {\"type\": \"overlay\", \"subnet\": ...}")
    ipam_type = obj.get("type", BUILTIN_IPAM)
    if not isinstance(ipam_type, str) or not _NAME_RE.fullmatch(ipam_type):
        raise _invalid(f"ipam.type must name an IPAM plugin such as \"overlay\" or "
                       f"\"host-local\", got {ipam_type!r}")
    if ipam_type == PLUGIN_TYPE:
        raise _invalid(f"ipam.type {ipam_type!r} names this plugin itself, not an IPAM plugin; "
                       f"use \"{BUILTIN_IPAM}\" for the built-in allocator")
    if ipam_type == "dhcp":
        # dhcp ignores `routes`; we install them (overlay/cni/leases.py), so we read them.
        return IpamConfig(ipam_type, routes=ipamconf.parse_routes(obj.get("routes")),
                          routes_given="routes" in obj)
    if ipam_type != BUILTIN_IPAM:
        # Delegated: the plugin named by ipam.type validates its own section.
        return IpamConfig(ipam_type)
    return ipamconf.parse_builtin(obj)


def parse_netconf(data: bytes) -> NetConf:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(Code.DECODING_FAILURE, "netconf on stdin is not valid JSON", str(exc)) from None
    except RecursionError:  # '[[[[...' nested deeper than the parser's stack
        raise CniError(Code.DECODING_FAILURE, "netconf on stdin is not valid JSON",
                       "nested too deeply") from None
    if not isinstance(obj, dict):
        raise CniError(Code.DECODING_FAILURE, "netconf on stdin must be a JSON object")

    # Absent, or "" as libcni passes it for a list without one: 0.1.0, as libcni reads it.
    version = obj.get("cniVersion") or "0.1.0"
    if version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_CNI_VERSION,
                       f"cniVersion {version!r} is not supported",
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    name = obj.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _invalid(f"name must match {_NAME_RE.pattern}, got {name!r}")
    if obj.get("type") != PLUGIN_TYPE:
        raise _invalid(f"type must be \"ovs\", got {obj.get('type')!r}")
    vni = _require_int(obj, "vxlanID", VNI_MIN, VNI_MAX, "")
    bridge = obj.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str) or not valid_ifname(bridge):
        raise _invalid(f"bridge must be an interface name, got {bridge!r}")
    mtu = _require_int(obj, "mtu", 68, 65535, "") if "mtu" in obj else None
    sock = obj.get("agentSocket", DEFAULT_AGENT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _invalid(f"agentSocket must be an absolute path, got {sock!r}")
    if "ipam" not in obj:
        raise _invalid("ipam is required, e.g. {\"type\": \"overlay\", \"subnet\": \"10.0.0.0/24\"}")
    ipam = _parse_ipam(obj["ipam"])
    if not _version_key(version) >= (0, 3, 0):
        families = [rset[0].subnet.version for rset in ipam.range_sets]
        if len(families) != len(set(families)):
            raise _invalid(f"cniVersion {version} allows one address per family; "
                           "use 0.3.0 or later for several range sets of one family")
    if "prevResult" in obj:
        _check_prev_result(obj["prevResult"])
    ip_masq = obj.get("ipMasq", True)
    if not isinstance(ip_masq, bool):
        raise _invalid(f"ipMasq must be true or false, got {ip_masq!r}")
    encrypted = obj.get("encrypted")
    if encrypted is not None and not isinstance(encrypted, bool):
        raise _invalid(f"encrypted must be true or false, got {encrypted!r}")
    return NetConf(version, name, vni, bridge, mtu, sock, ipam, ip_masq,
                   _parse_dns(obj.get("dns")), _parse_dhcp_servers(obj.get("dhcpServers")),
                   encrypted, obj, data)


MAX_DHCP_SERVERS = 16


def _parse_dhcp_servers(raw: Any) -> tuple[Address, ...]:
    """Servers are named by address, not by container ID: the operator knows a server's
    address before it starts (a server needs a fixed one, and clients are told it as their
    router or in their leases), while a container ID is the runtime's choice. Anti-spoofing
    ties every address to the one port that holds it, so an address names one endpoint."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_DHCP_SERVERS:
        raise _invalid(f"dhcpServers must be a list of at most {MAX_DHCP_SERVERS} IP addresses "
                       f"(the DHCP servers' own), e.g. [\"10.9.0.2\"]; got {raw!r}")
    out = []
    for item in raw:
        try:
            if isinstance(item, str) and "%" not in item and "/" not in item:
                out.append(ipaddress.ip_address(item))
                continue
        except ValueError:
            pass
        raise _invalid(f"dhcpServers: {item!r} is not an IP address; name each DHCP server "
                       "by its own address, e.g. \"10.9.0.2\"")
    return tuple(out)


def _parse_dns(raw: Any) -> dict[str, Any]:
    """The spec's DNS object: nameservers, domain, search, options; returned in the result."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _invalid(f"dns must be an object with nameservers, domain, search, options; "
                       f"got {raw!r}")
    out: dict[str, Any] = {}
    for key in ("nameservers", "search", "options"):
        if key in raw:
            items = raw[key]
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise _invalid(f"dns.{key} must be a list of strings, got {items!r}")
            if key == "nameservers":
                for ns in items:
                    ipamconf.parse_ip(ns, "dns nameserver")
            out[key] = list(items)
    if "domain" in raw:
        if not isinstance(raw["domain"], str):
            raise _invalid(f"dns.domain must be a string, got {raw['domain']!r}")
        out["domain"] = raw["domain"]
    return out


def _check_prev_result(prev: Any) -> None:
    """The shape ADD (appending to it) and CHECK (comparing with it) rely on; not the values."""
    if not isinstance(prev, dict):
        raise CniError(Code.DECODING_FAILURE, "prevResult must be a CNI result object")
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key)
        if items is not None and (not isinstance(items, list)
                                  or not all(isinstance(i, dict) for i in items)):
            raise CniError(Code.DECODING_FAILURE,
                           f"prevResult.{key} must be a list of objects, got {items!r}")
    if prev.get("dns") is not None and not isinstance(prev["dns"], dict):
        raise CniError(Code.DECODING_FAILURE,
                       f"prevResult.dns must be an object, got {prev['dns']!r}")


def valid_ifname(name: str) -> bool:
    """What the kernel accepts as a name, and keeps as given: 1-15 bytes, no / : % or space.

    The kernel's isspace() also takes byte 0xa0, which UTF-8 uses inside characters such as
    'à'; control characters are refused as well (see _IFNAME_BAD).
    """
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\udXXX" escape
        return False
    return (0 < len(raw) <= 15 and name not in (".", "..") and b"\xa0" not in raw
            and not _IFNAME_BAD.search(name))


def parse_env(env: dict[str, str]) -> CniEnv:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(Code.INVALID_ENV, f"CNI_COMMAND must be one of {', '.join(COMMANDS)}, "
                       f"got {command!r}")
    cid = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    if command in NO_CONTAINER_COMMANDS:
        return CniEnv(command, cid, netns, ifname, env.get("CNI_ARGS", ""), env.get("CNI_PATH", ""))
    if not _NAME_RE.fullmatch(cid):
        raise CniError(Code.INVALID_ENV, f"CNI_CONTAINERID must match {_NAME_RE.pattern}, got {cid!r}")
    if not valid_ifname(ifname):
        raise CniError(Code.INVALID_ENV,
                       f"CNI_IFNAME must be a Linux interface name (1-15 chars), got {ifname!r}")
    if command in ("ADD", "CHECK"):
        if not netns:
            raise CniError(Code.INVALID_ENV, f"CNI_NETNS is required for {command}")
        if not netns.startswith("/") or not os.path.exists(netns):
            raise CniError(Code.INVALID_ENV, f"CNI_NETNS {netns!r} does not exist",
                           "it must be the path of a network namespace, e.g. /var/run/netns/NAME")
    return CniEnv(command, cid, netns, ifname, env.get("CNI_ARGS", ""), env.get("CNI_PATH", ""))
