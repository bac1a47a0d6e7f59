"""What the control plane stores in etcd, and where.

Key layout (v1):

    /overlay/v1/hosts/<host>                       HostRecord      leased: vanishes with its agent
    /overlay/v1/networks/<name>                    NetworkRecord   created by the first ADD
    /overlay/v1/vnis/<vni>                         "<name>"        makes a VNI belong to one network
    /overlay/v1/endpoints/<net>/<container>/<if>   EndpointRecord  no lease: survives agent restarts
    /overlay/v1/ipam/<net>/<ip>                    Holder          {"owner": "<container>/<if>", "host"}
    /overlay/v1/wireguard-rotations/<host>         "<request id>"  a key rotation asked of <host>

A host writes and deletes only endpoint records and allocations that name it, in transactions
that compare the owner (store/ownership.py, Store.release_ip).

Every name in a key was validated by overlay.cni.netconf (no '/'), so keys cannot collide.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

ROOT = "/overlay/v1/"
HOSTS = ROOT + "hosts/"
NETWORKS = ROOT + "networks/"
VNIS = ROOT + "vnis/"
ENDPOINTS = ROOT + "endpoints/"
IPAM = ROOT + "ipam/"
# A request that host <host> rotates its WireGuard key pair (`overlayctl hosts rotate-key`):
# the host's agent makes the new pair (its private key never leaves the host) and deletes it.
ROTATIONS = ROOT + "wireguard-rotations/"


def host_key(host: str) -> str:
    return HOSTS + host


def network_key(name: str) -> str:
    return NETWORKS + name


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni}"


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    return f"{ENDPOINTS}{network}/{container_id}/{ifname}"


def rotation_key(host: str) -> str:
    return ROTATIONS + host


def ipam_prefix(network: str) -> str:
    return f"{IPAM}{network}/"


def owner_of(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


# The Docker driver's attachments (overlay/docker/) have container IDs "docker-<MAC>": the
# container ID is the only field every trace of an attachment carries (OVS port, endpoint
# record, address holder, even before Join wrote the first two). They belong to the driver, not
# to any CNI runtime: CNI ADD refuses such IDs, and CNI DEL and GC leave them alone.
DOCKER_PREFIX = "docker-"


def docker_owned(container_id: str) -> bool:
    return container_id.startswith(DOCKER_PREFIX)


class Record:
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: bytes | str) -> Any:
        obj = json.loads(data)
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HostRecord(Record):
    host: str
    vtep: str
    datapath: str
    # Which agent installation holds the host name (a random id kept in the host's OVSDB):
    # the same across restarts of one machine's agent, different on another machine that was
    # given the same name (overlay/store/ownership.py). "" in records of older agents.
    agent_id: str = ""
    # WireGuard (overlay/wireguard/): the public key (base64), the address of the host's
    # WireGuard device and its UDP port; "" / 0 where the host cannot encrypt. Never a private key.
    wg_public_key: str = ""
    wg_address: str = ""
    wg_port: int = 0


@dataclass(frozen=True)
class NetworkRecord(Record):
    name: str
    vni: int
    subnet: str
    # Its VXLAN travels only inside WireGuard (docs/encryption.md); fixed when it is created.
    encrypted: bool = False


def network_conflict(have: NetworkRecord, rec: NetworkRecord) -> str:
    """Why `rec` cannot be recorded over `have` (etcd holds it already), or "".

    A delegated IPAM may not say its subnet (""): then only the VNI must agree. The first
    subnet decides: records of older agents name only that one."""
    subnets_differ = bool(have.subnet and rec.subnet and
                          have.subnet.split(",")[0] != rec.subnet.split(",")[0])
    if have.vni != rec.vni or subnets_differ:
        return (f"network {rec.name!r} already exists with vxlanID {have.vni} and subnet "
                f"{have.subnet}; this netconf says {rec.vni} and {rec.subnet}")
    return encryption_differs(have, rec) if have.encrypted != rec.encrypted else ""


def encryption_differs(have: NetworkRecord, rec: NetworkRecord) -> str:
    """What ADD says when a netconf asks to change a network's encryption, which is fixed."""
    def said(encrypted: bool) -> str:
        return "encrypted" if encrypted else "not encrypted"
    return (f"network {rec.name!r} is {said(have.encrypted)} and stays so: a network's "
            f"encryption is fixed when it is created, and this ADD asks for it "
            f"{said(rec.encrypted)}; set \"encrypted\": {str(have.encrypted).lower()} in the "
            "netconf (or the agent's encrypt_networks default), or create another network")


@dataclass(frozen=True)
class Holder(Record):
    """Who holds an IP allocation: the attachment, and the host it lives on (for GC)."""

    owner: str
    host: str

    @classmethod
    def parse(cls, value: bytes) -> Holder:
        try:
            holder: Holder = cls.from_json(value)
            return holder
        except (ValueError, TypeError, RecursionError):
            return cls(value.decode(errors="replace"), "")  # not ours: never matches an owner


@dataclass(frozen=True)
class EndpointRecord(Record):
    network: str
    container_id: str
    ifname: str
    host: str
    vni: int
    ips: list[str]  # addresses with prefix, e.g. ["10.0.0.2/24", "fd00::2/64"]
    mac: str
    port: str       # the host-side veth, also the OVS port name
    netns: str
    mtu: int = 0
    routes: list[dict[str, str]] = field(default_factory=list)
    ipam: str = "overlay"  # or the delegated plugin's name
    # The host's VTEP when the record was written: lets an agent that starts while that host's
    # leased key has lapsed still reach it for a while (overlay/agent/reconciler.py, _adopt).
    vtep: str = ""
    # What network policies select the endpoint by (overlay/cni/labels.py sets them, the
    # Kubernetes rules of overlay/policy/labels.py check them on both sides of etcd).
    labels: dict[str, str] = field(default_factory=dict)
    # The Kubernetes pod, from K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS (overlay/cni/pods.py);
    # "" when the runtime named none.
    pod_namespace: str = ""
    pod_name: str = ""

    @property
    def key(self) -> str:
        return endpoint_key(self.network, self.container_id, self.ifname)

    @property
    def addresses(self) -> list[str]:
        return [ip.split("/")[0] for ip in self.ips]


def endpoint_records(items: Iterable[tuple[str, bytes]]) -> list[EndpointRecord]:
    """The records of (key, value) pairs read from etcd; a malformed one is skipped."""
    out = []
    for key, value in items:
        try:
            out.append(EndpointRecord.from_json(value))
        except (ValueError, TypeError, KeyError, RecursionError):  # any shape: another host's
            log.warning("ignoring malformed endpoint record %s", key)
    return out
