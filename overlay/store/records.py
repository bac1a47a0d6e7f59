"""What the control plane stores in etcd, and where.

Key layout (v1):

    /overlay/v1/hosts/<host>                       HostRecord      leased: vanishes with its agent
    /overlay/v1/networks/<name>                    NetworkRecord   created by the first ADD
    /overlay/v1/vnis/<vni>                         "<name>"        makes a VNI belong to one network
    /overlay/v1/endpoints/<net>/<container>/<if>   EndpointRecord  no lease: survives agent restarts
    /overlay/v1/ipam/<net>/<ip>                    Holder          {"owner": "<container>/<if>", "host"}

A host writes and deletes only endpoint records and allocations that name it, in transactions
that compare the owner (store/ownership.py, Store.release_ip).

Every name in a key was validated by overlay.cni.netconf (no '/'), so keys cannot collide.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = "/overlay/v1/"
HOSTS = ROOT + "hosts/"
NETWORKS = ROOT + "networks/"
VNIS = ROOT + "vnis/"
ENDPOINTS = ROOT + "endpoints/"
IPAM = ROOT + "ipam/"


def host_key(host: str) -> str:
    return HOSTS + host


def network_key(name: str) -> str:
    return NETWORKS + name


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni}"


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    return f"{ENDPOINTS}{network}/{container_id}/{ifname}"


def ipam_prefix(network: str) -> str:
    return f"{IPAM}{network}/"


def owner_of(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


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


@dataclass(frozen=True)
class NetworkRecord(Record):
    name: str
    vni: int
    subnet: str


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
