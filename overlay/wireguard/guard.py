"""The receive-side guard: VXLAN that claims to come from a WireGuard address must have come
out of the WireGuard device.

The flows admit an encrypted network's VNI only with tun_src = a peer's WireGuard address
(overlay/agent/encryption.py). On the kernel datapath the outer packet reaches OVS's VXLAN
socket after netfilter's PREROUTING, so an underlay packet forging such a source (UDP 4789
from 100.64.x.y, sent in clear by anyone on the underlay) would pass those flows. This rule in
the raw table drops it before routing: UDP 4789 from the WireGuard subnet is accepted only on
the WireGuard device, where WireGuard put it after checking the sender's key and its allowed
address.

This is the one place encryption shells out (iptables): no library here writes iptables rules
(the gateway's NAT, overlay/gateway/nat.py, does the same).
"""

from __future__ import annotations

import subprocess

from overlay.errors import CniError, Code

VXLAN_PORT = 4789
COMMENT = "overlay: VXLAN from WireGuard addresses only through WireGuard"


def rule(ifname: str, subnet: str) -> list[str]:
    return ["PREROUTING", "!", "-i", ifname, "-s", subnet, "-p", "udp", "--dport",
            str(VXLAN_PORT), "-m", "comment", "--comment", COMMENT, "-j", "DROP"]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", "-t", "raw", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def present(ifname: str, subnet: str) -> bool:
    return _iptables("-C", *rule(ifname, subnet)).returncode == 0


def ensure(ifname: str, subnet: str) -> None:
    """Idempotent: the rule is inserted first in raw PREROUTING if it is not there."""
    if present(ifname, subnet):
        return
    proc = _iptables("-I", *rule(ifname, subnet))
    if proc.returncode != 0:
        raise CniError(Code.INTERNAL, "cannot install the WireGuard receive guard",
                       proc.stderr.strip())
