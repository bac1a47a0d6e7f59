"""Checks of the records other hosts write into etcd, before anything in them is believed.

Every byte of an endpoint, host or network record crosses a trust boundary: any host with
write access to etcd (or a bug in one) can put anything there. The reconciler is the one place
where records enter the agent, and it runs each one through this module first. Everything here
is pure: a record in, its facts or `Rejected(reason)` out. The reasons are few and fixed, so the
metric of rejected records (overlay_records_rejected_total) has a bounded set of labels.

What is checked, and why:
- size first (MAX_RECORD_BYTES), before the JSON parser sees it; the parser's own recursion
  limit (RecursionError on deep nesting) becomes a rejection like any other malformation;
- the key and the body agree: a record under endpoints/<net>/<ctr>/<if> must say that network,
  container and interface, and hosts/<h> must say host h, or one network's record could
  pose as another's;
- the MAC is a unicast address (not multicast or broadcast, not zero): ARP answers and L2
  forwarding are built from it;
- labels are Kubernetes labels, at most MAX_LABELS of them (overlay/policy/labels.py): policies
  select endpoints by them, so a record must not carry keys no selector could name;
- the pod (pod_namespace, pod_name), when the record names one, has names Kubernetes accepts:
  operators read them in `overlayctl endpoints`, so a record must not smuggle control
  characters or unbounded text there (absent in records of older agents: none);
- addresses are valid, at most MAX_ADDRESSES of them, and (`fits`) inside the subnet of their
  network's record, with the network's VNI. Those two need the network record, so they are
  checked by the reconciler once it knows the network.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from types import MappingProxyType
from typing import Any, NamedTuple

from overlay.model import VNI_MAX, VNI_MIN, dns_label_problem, dns_subdomain_problem
from overlay.policy.labels import Labels, labels_problem
from overlay.store import records as r

MAX_RECORD_BYTES = 16 * 1024  # a record of today is ~400 bytes; room for routes, none for abuse
MAX_ADDRESSES = 16            # per endpoint (a dual-stack container has 2)
MAX_NAME = 253                # a host name; container ids and interfaces are shorter still

REASONS = ("too_large", "malformed", "key_mismatch", "vni", "mac", "address",
           "too_many_addresses", "subnet", "vtep", "labels", "pod", "bad_policy",
           "encryption_downgrade")

_ENDPOINTS_LEN = len(r.ENDPOINTS)
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_decode = json.JSONDecoder().decode


class Rejected(ValueError):
    """The record is not to be believed; `reason` is one of REASONS (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


Subnet = tuple[int, int, int]  # (IP version, network as an int, mask as an int)


class NetworkFacts(NamedTuple):
    vni: int
    subnets: tuple[Subnet, ...]  # empty: a delegated IPAM that does not say (no check)
    encrypted: bool = False      # its VXLAN goes only inside WireGuard (agent/encryption.py)


class Endpoint(NamedTuple):
    host: str
    network: str
    vni: int
    mac: str
    ips: tuple[str, ...]
    created: int  # the key's etcd create revision: the first holder of an address keeps it
    labels: Labels = MappingProxyType({})  # what policies select it by


def decode(value: bytes) -> dict[str, Any]:
    """The record's JSON object; Rejected if too large, not JSON, or not an object."""
    if len(value) > MAX_RECORD_BYTES:
        raise Rejected("too_large", f"{len(value)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        obj = _decode(value.decode())  # json.loads(bytes) also guesses the encoding: slower
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Rejected("malformed", f"not JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise Rejected("malformed", f"a JSON {type(obj).__name__}, not an object")
    return obj


def _name(obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise Rejected("malformed", f"bad {field}")
    return value


def vni_of(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not VNI_MIN <= value <= VNI_MAX:
        raise Rejected("vni", f"bad vni {str(value)[:40]!r}")
    return value


def check_mac(mac: Any) -> str:
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise Rejected("mac", f"bad mac {str(mac)[:40]!r}")
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":  # group bit: multicast, broadcast
        raise Rejected("mac", f"{mac} is not a unicast address")
    return mac


def address(text: str) -> str:
    """The canonical text of the address of "ip/prefix" (what ip_interface(text).ip gives).

    Dotted-quad IPv4 with a plain prefix length, by far the common case, is checked with
    inet_pton, which refuses what ipaddress refuses (leading zeros, octets over 255) and so
    is already canonical; about 15x faster than ipaddress, which was most of the time of
    building the model of 50,000 endpoints at start. Anything else goes through ipaddress."""
    ip, _, prefix = text.partition("/")
    try:
        if ":" not in ip and (not prefix or (len(prefix) <= 2 and prefix.isdigit()
                                             and int(prefix) <= 32
                                             and prefix == str(int(prefix)))):
            try:
                socket.inet_pton(socket.AF_INET, ip)
                return ip
            except (OSError, UnicodeEncodeError):  # not an address; ipaddress says why
                pass
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:  # also int() of odd digits ("²"), which isdigit() accepts
        raise Rejected("address", f"bad address {text[:60]!r}") from None


def parse_endpoint(key: str, obj: dict[str, Any], created: int,
                   vnis: dict[int, int] | None = None) -> Endpoint:
    """The routing facts of an endpoint record under `key`, checked on their own (the network's
    VNI and subnet are `fits`' job).

    Memory at scale: an agent holds every remote endpoint of its networks (50,000 in the
    benchmark), so what repeats across records is shared rather than held once per record:
    host and network names (sys.intern) and the VNI (one int object per VNI, from `vnis`)."""
    parts = key[_ENDPOINTS_LEN:].split("/")
    if (len(parts) != 3 or obj.get("network") != parts[0]
            or obj.get("container_id") != parts[1] or obj.get("ifname") != parts[2]):
        raise Rejected("key_mismatch", "the record names another network, container or "
                                       "interface than its key")
    host = _name(obj, "host")
    vni = vni_of(obj.get("vni"))
    mac = check_mac(obj.get("mac"))
    ips = obj.get("ips")
    # No address yet is valid: a DHCP client's record is published before its lease, so that
    # the server's unicast answers to its MAC find this host (overlay/cni/leases.py).
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise Rejected("malformed", "ips is not a list of strings")
    if len(ips) > MAX_ADDRESSES:
        raise Rejected("too_many_addresses", f"{len(ips)} (at most {MAX_ADDRESSES})")
    check_pod(obj)
    if vnis is not None:
        vni = vnis.setdefault(vni, vni)
    return Endpoint(sys.intern(host), sys.intern(parts[0]), vni, mac,
                    tuple(map(address, ips)), created, check_labels(obj.get("labels")))


_NO_LABELS: Labels = MappingProxyType({})


def check_labels(value: Any) -> Labels:
    """The record's labels (absent in records of older agents: none), or Rejected."""
    if value is None or value == {}:
        return _NO_LABELS
    problem = labels_problem(value)
    if problem:
        raise Rejected("labels", problem[:120])
    return dict(value)


def check_pod(obj: dict[str, Any]) -> None:
    """Rejected("pod") unless the record names no pod, or a valid namespace and name."""
    namespace, name = obj.get("pod_namespace", ""), obj.get("pod_name", "")
    if namespace == "" and name == "":  # the common case first: one lookup each, no regex
        return
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise Rejected("pod", "pod_namespace and pod_name must be strings")
    if not namespace or not name:
        raise Rejected("pod", "a pod needs both pod_namespace and pod_name")
    problem = dns_label_problem(namespace) or dns_subdomain_problem(name)
    if problem:
        raise Rejected("pod", problem[:120])


def own_record(obj: dict[str, Any]) -> r.EndpointRecord:
    """The whole record of one of this host's endpoints (the janitor's view)."""
    try:
        rec: r.EndpointRecord = r.EndpointRecord(
            **{k: obj[k] for k in r.EndpointRecord.__dataclass_fields__ if k in obj})
    except TypeError:
        raise Rejected("malformed", "fields missing from an endpoint record") from None
    return rec


def parse_host(key: str, value: bytes) -> str:
    """The VTEP of the host record under `key`."""
    obj = decode(value)
    if obj.get("host") != key[len(r.HOSTS):]:
        raise Rejected("key_mismatch", "the record names another host than its key")
    vtep = obj.get("vtep")
    try:
        return str(ipaddress.IPv4Address(vtep if isinstance(vtep, str) else ""))
    except ValueError:
        raise Rejected("vtep", f"bad vtep {str(vtep)[:40]!r}") from None


def parse_subnets(text: str) -> tuple[Subnet, ...]:
    """"10.0.0.0/24" or several, comma-separated; "" for none."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        net = ipaddress.ip_network(part, strict=False)
        out.append((net.version, int(net.network_address), int(net.netmask)))
    return tuple(out)


def parse_network(key: str, value: bytes) -> tuple[str, NetworkFacts]:
    obj = decode(value)
    name = key[len(r.NETWORKS):]
    if obj.get("name") != name:
        raise Rejected("key_mismatch", "the record names another network than its key")
    subnet = obj.get("subnet", "")
    try:
        subnets = parse_subnets(subnet if isinstance(subnet, str) else "\0")
    except ValueError:
        raise Rejected("subnet", f"bad subnet {str(subnet)[:60]!r}") from None
    encrypted = obj.get("encrypted", False)
    if not isinstance(encrypted, bool):
        raise Rejected("malformed", f"bad encrypted {str(encrypted)[:20]!r}")
    return name, NetworkFacts(vni_of(obj.get("vni")), subnets, encrypted)


def _as_int(ip: str) -> tuple[int, int]:
    if ":" in ip:
        return 6, int(ipaddress.IPv6Address(ip))
    return 4, int.from_bytes(socket.inet_aton(ip), "big")


def fits(endpoint: Endpoint, facts: NetworkFacts) -> None:
    """Raises Rejected unless the endpoint has its network's VNI and addresses in its subnets."""
    if endpoint.vni != facts.vni:
        raise Rejected("vni", f"vni {endpoint.vni} is not network {endpoint.network}'s "
                              f"({facts.vni})")
    if not facts.subnets:
        return
    for ip in endpoint.ips:
        version, value = _as_int(ip)
        named = False  # does the record name a subnet of this family at all?
        for v, net, mask in facts.subnets:
            if v == version:
                if value & mask == net:
                    break
                named = True
        else:
            # A record naming no subnet of this family (an older agent's names only the first
            # of a dual-stack network's) cannot say: the address is unchecked, claims hold.
            if not named:
                continue
            raise Rejected("subnet", f"{ip} is outside network {endpoint.network}'s subnet")
