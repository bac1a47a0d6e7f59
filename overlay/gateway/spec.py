"""What one network's gateway on a host is, derived from the netconf alone (pure).

Everything here is a function of the VNI and the netconf, so every host builds the same
gateway without talking to the others: the anycast gateway of EVPN fabrics and OVN's
distributed router. Names and numbers:

- port `ovg<vni>` (OVS internal, on br-int), at most 11 characters;
- MAC 0e:6f:76 + the VNI's 3 bytes: locally administered, unicast, and outside the 0a:58
  prefix of container MACs, so a gateway never shares a MAC with a container;
- conntrack zone 1 + (vni - 1) % 65535 (zones are 16 bits): the original direction of egress
  connections is tracked per network, so two networks with the same subnet, the same
  container address and the same source port do not share a conntrack entry;
- fwmark zone << 16 (mask 0xffff0000) on replies and route table TABLE_BASE + zone, so replies
  to egress connections return to the network they came from even when another network on
  the host has the same subnet (the main table can name only one of them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

PORT_PREFIX = "ovg"
MAC_PREFIX = "0e:6f:76"
MARK_MASK = 0xFFFF0000
TABLE_BASE = 0x0F000000  # route tables TABLE_BASE + zone; far from the usual 0-255

# external_ids on the gateway's OVS interface: enough to rebuild it after an agent restart.
EXT_GATEWAY = "overlay-gateway"  # the network's name
EXT_VNI, EXT_ADDRESS, EXT_MASQ, EXT_MTU = (
    "overlay-vni", "overlay-gateway-address", "overlay-ip-masq", "overlay-mtu")


@dataclass(frozen=True)
class GatewaySpec:
    network: str
    vni: int
    address: ipaddress.IPv4Interface  # gateway IP with the subnet's prefix length
    masquerade: bool
    mtu: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.address.network

    @property
    def port(self) -> str:
        return f"{PORT_PREFIX}{self.vni}"

    @property
    def mac(self) -> str:
        return gateway_mac(self.vni)

    @property
    def zone(self) -> int:
        return 1 + (self.vni - 1) % 65535

    @property
    def mark(self) -> int:
        return self.zone << 16

    @property
    def table(self) -> int:
        return TABLE_BASE + self.zone

    @property
    def comment(self) -> str:
        """Every iptables rule of this gateway carries it: removal deletes exactly these."""
        return f"overlay-gw:{self.vni}"

    def external_ids(self) -> dict[str, str]:
        return {EXT_GATEWAY: self.network, EXT_VNI: str(self.vni),
                EXT_ADDRESS: str(self.address), EXT_MASQ: str(self.masquerade).lower(),
                EXT_MTU: str(self.mtu)}


def gateway_mac(vni: int) -> str:
    return MAC_PREFIX + "".join(f":{b:02x}" for b in vni.to_bytes(3, "big"))


def from_external_ids(ids: dict[str, str]) -> GatewaySpec | None:
    """The spec recorded on a gateway port, or None if the port is not one of ours."""
    try:
        return GatewaySpec(ids[EXT_GATEWAY], int(ids[EXT_VNI]),
                           ipaddress.IPv4Interface(ids[EXT_ADDRESS]), ids[EXT_MASQ] == "true",
                           int(ids[EXT_MTU]))
    except (KeyError, ValueError):
        return None
