"""The VTEPs of other hosts, as learnt from their host records, kept in a file across restarts.

An agent that starts while a peer's agent is restarting (its leased host key has lapsed) never
sees that peer's host record, yet the peers that kept running forward to it through their
host_grace (overlay/agent/reconciler.py). This agent must do the same, and it must not take the
VTEP from the peer's endpoint records: anyone who can write one record could then point a
network's traffic at any address. So the agent writes down the VTEPs it learnt from host
records (the only records that speak for a host's address), and a restarted agent reads them
back: a peer it knew keeps its VTEP for the grace period, a host it never knew gets nothing.

The file is the agent's own (root, in its run directory), still checked when read: a torn or
edited file is ignored entry by entry, never fatal.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os

log = logging.getLogger(__name__)

MAX_BYTES = 4 * 1024 * 1024  # 50 bytes a host: far more hosts than a cluster has


def load(path: str) -> dict[str, str]:
    """host -> VTEP as last saved; {} if there is no file or it cannot be read."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
        obj = json.loads(data) if len(data) <= MAX_BYTES else None
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("ignoring the saved peer VTEPs in %s: %s", path, exc)
        return {}
    out = {}
    for host, vtep in (obj.items() if isinstance(obj, dict) else ()):
        try:
            out[str(host)] = str(ipaddress.IPv4Address(vtep))
        except ValueError:
            continue
    return out


def save(path: str, vteps: dict[str, str]) -> None:
    """Write atomically (rename), so a crash mid-write leaves the previous file whole."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(vteps, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the peer VTEPs to %s: %s", path, exc)
