"""What overlayctl says and does about encrypted networks (docs/encryption.md).

- `overlayctl hosts`: each host's key fingerprint, and when this machine's WireGuard device
  last completed a handshake with it (read from the local device over netlink; "-" where this
  machine has none, e.g. overlayctl run away from the hosts).
- `overlayctl hosts rotate-key HOST`: asks HOST's agent, through etcd, for a new key pair. The
  private key is made on HOST and never leaves it; the request only says "now".
- `overlayctl doctor`: an encrypted network and the hosts that cannot carry it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from overlay.store import records as r
from overlay.wireguard import keys

DEFAULT_INTERFACE = "wg-ovl"


def handshakes(ifname: str = DEFAULT_INTERFACE) -> dict[str, float] | None:
    """Public key -> last handshake of the local device's peers; None without a device."""
    try:
        from overlay.wireguard.device import Device

        dev = Device(ifname=ifname, address="", subnet="", port=0, mtu=0)
        if not dev.exists():
            return None
        return {p.public_key: p.last_handshake for p in dev.peers()}
    except Exception:  # noqa: BLE001 (no permission, no module: the column shows "-")
        return None


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    return "never" if when <= 0 else f"{max(0, int(now - when))}s ago"


def add_key_columns(rows: list[dict[str, Any]], seen: dict[str, float] | None) -> None:
    """Each host row gets `key` (the fingerprint of its public key, "-" if it publishes none)
    and `handshake` (with this machine's device)."""
    now = time.time()
    for row in rows:
        public = row.get("wg_public_key") or ""
        row["key"] = keys.fingerprint(public) if public else "-"
        row["handshake"] = _ago(None if seen is None or not public else seen.get(public, 0), now)


def cluster_problems(state: dict[str, bytes]) -> list[str]:
    """Encrypted networks, and live hosts that publish no usable key: ADD of such a network is
    refused there, and the others send them nothing of it."""
    encrypted = []
    for key, value in state.items():
        if key.startswith(r.NETWORKS):
            try:
                if json.loads(value).get("encrypted") is True:
                    encrypted.append(key[len(r.NETWORKS):])
            except (ValueError, AttributeError, RecursionError):
                continue  # cli/doctor.py reports unreadable records
    if not encrypted:
        return []
    out = []
    for key, value in sorted(state.items()):
        if not key.startswith(r.HOSTS):
            continue
        try:
            host = json.loads(value)
            public, datapath = host.get("wg_public_key"), host.get("datapath")
        except (ValueError, AttributeError, RecursionError):
            continue
        if keys.decode_public(public) is None:
            why = ("its OVS runs the userspace (netdev) datapath" if datapath == "netdev"
                   else "it publishes no usable WireGuard key (no wireguard module?)")
            out.append(f"host {key[len(r.HOSTS):]} cannot carry the encrypted network(s) "
                       f"{', '.join(sorted(encrypted))}: {why}; ADD there is refused and no "
                       "host sends it their traffic (the kernel datapath and WireGuard are "
                       "needed)")
    return out
