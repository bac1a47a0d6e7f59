"""The `external_ids` of an endpoint's OVS Interface: one encoder, one decoder.

ADD writes them (cni/attach.py) so that the agent can rebuild its local flows from OVSDB alone
when etcd is unreachable at start (agent/main.py), and so that GC, the janitor, the doctor and
the metrics can tell which attachment a port belongs to. Every reader and writer goes through
this module; nobody else spells the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CONTAINER, IFNAME, NETNS, NETWORK = (
    "overlay-container-id", "overlay-ifname", "overlay-netns", "overlay-network")
VNI, IP, MAC = "overlay-vni", "overlay-ip", "overlay-mac"
IPAM = "overlay-ipam"  # "dhcp": the port's flows also admit DHCP from 0.0.0.0
DHCP_SERVER = "overlay-dhcp-server"  # "true": named in dhcpServers, may answer DHCP clients
ENCRYPTED = "overlay-encrypted"  # "true": its network was encrypted at ADD (agent/encryption_pins.py)


@dataclass(frozen=True)
class PortOwner:
    """The attachment a port belongs to: enough for GC, the janitor and the metrics."""

    network: str
    container_id: str
    ifname: str
    netns: str = ""


@dataclass(frozen=True)
class PortIds:
    """Everything ADD records on the port: enough to rebuild the port's local flows."""

    owner: PortOwner
    vni: int
    ips: tuple[str, ...]
    mac: str
    ipam: str
    dhcp_server: bool = False
    encrypted: bool = False


def encode(ids: PortIds) -> dict[str, str]:
    return {CONTAINER: ids.owner.container_id, IFNAME: ids.owner.ifname,
            NETNS: ids.owner.netns, NETWORK: ids.owner.network, VNI: str(ids.vni),
            IP: ",".join(ids.ips), MAC: ids.mac, IPAM: ids.ipam,
            DHCP_SERVER: str(ids.dhcp_server).lower(), ENCRYPTED: str(ids.encrypted).lower()}


def owner(ext: Mapping[str, str]) -> PortOwner | None:
    """The attachment named by a port's external_ids; None for a port that is not an
    endpoint's (a tunnel, a gateway, one another tool added)."""
    if not all(k in ext for k in (CONTAINER, IFNAME, NETWORK)):
        return None
    return PortOwner(ext[NETWORK], ext[CONTAINER], ext[IFNAME], ext.get(NETNS, ""))


def network(ext: Mapping[str, str]) -> str | None:
    """The network a port says it belongs to, if any."""
    return ext.get(NETWORK)


def decode(ext: Mapping[str, str]) -> PortIds | None:
    """The whole record; None if the port is not an endpoint's. ValueError if it says it is one
    but a field is missing or malformed (a port ADD did not finish writing, or another tool's)."""
    if CONTAINER not in ext:
        return None
    found = owner(ext)
    try:
        if found is None:
            raise KeyError(IFNAME if NETWORK in ext else NETWORK)
        return PortIds(found, int(ext[VNI]), tuple(filter(None, ext[IP].split(","))), ext[MAC],
                       ext.get(IPAM, ""), ext.get(DHCP_SERVER) == "true",
                       ext.get(ENCRYPTED) == "true")
    except KeyError as missing:
        raise ValueError(f"external_ids lack {missing}") from None
