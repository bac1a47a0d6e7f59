"""What the control plane stores in etcd, and where.

Key layout (v1):

    /overlay/v1/hosts/<host>                       HostRecord      leased: vanishes with its agent
    /overlay/v1/networks/<name>                    NetworkRecord   created by the first ADD
    /overlay/v1/vnis/<vni>                         "<name>"        makes a VNI belong to one network
    /overlay/v1/endpoints/<net>/<container>/<if>   EndpointRecord  no lease: survives agent restarts
    /overlay/v1/ipam/<net>/<ip>                    "<container>/<if>"

Every name in a key was validated by overlay.cni.netconf (no '/'), so keys cannot collide.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class NetworkRecord(Record):
    name: str
    vni: int
    subnet: str


@dataclass(frozen=True)
class EndpointRecord(Record):
    network: str
    container_id: str
    ifname: str
    host: str
    vni: int
    ip: str       # address with prefix, e.g. "10.0.0.2/24"
    mac: str
    port: str     # the host-side veth, also the OVS port name
    netns: str

    @property
    def key(self) -> str:
        return endpoint_key(self.network, self.container_id, self.ifname)

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]
