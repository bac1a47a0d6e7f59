"""Helpers of the agent's start-up and resync loop (overlay/agent/agent.py): what this host's
OVSDB says about its endpoints, the host's registration, the janitor's round, and the clock of
the start-up log lines."""

from __future__ import annotations

import logging
import os
import threading

from overlay.agent.janitor import Janitor
from overlay.agent.metrics import Metrics
from overlay.cni.leases import DHCP
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError
from overlay.model import endpoint_key
from overlay.ovs import portschema
from overlay.ovs.ovsdb import Ovsdb
from overlay.store import records
from overlay.store.etcd import Store

log = logging.getLogger("overlay.agent")


def run_janitor(janitor: Janitor, metrics: Metrics,
                own: list[records.EndpointRecord] | None = None) -> None:
    try:
        metrics.janitor_removed(len(janitor.run(own)))
    except CniError as err:  # etcd or OVS unavailable: next round
        log.warning("janitor could not run: %s", err)


def local_endpoints(ovs: Ovsdb, bridge: str) -> dict[str, LocalPort]:
    """Every endpoint port found on the bridge, rebuilt from its external_ids."""
    found = {}
    for port in ovs.ports(bridge):
        if port.ofport <= 0:
            continue
        try:
            ids = portschema.decode(port.external_ids)
        except ValueError:
            log.warning("port %s has incomplete overlay external_ids; leaving it alone", port.name)
            continue
        if ids is None:
            continue
        key = endpoint_key(ids.owner.network, ids.owner.container_id, ids.owner.ifname)
        found[key] = LocalPort(ids.vni, ids.mac, ids.ips, port.ofport, ids.ipam == DHCP,
                               ids.dhcp_server)
    return found


def encrypted_networks(ovs: Ovsdb, bridge: str) -> set[str]:
    """Networks whose ports here were attached encrypted: they stay encrypted whatever a
    network record says later (agent/encryption_pins.py)."""
    found: set[str] = set()
    try:
        ports = ovs.ports(bridge)
    except CniError as err:  # read a moment ago by local_endpoints; records still pin
        log.warning("cannot read which local networks are encrypted: %s", err)
        return found
    for port in ports:
        try:
            ids = portschema.decode(port.external_ids)
        except ValueError:
            continue
        if ids is not None and ids.encrypted:
            found.add(ids.owner.network)
    return found


def local_networks(dataplane: Dataplane) -> set[str]:
    """Networks with an endpoint on this host (local keys are network/container/ifname)."""
    return {key.split("/", 1)[0] for key in dataplane.local_keys()}


def since_process_start() -> float:
    """Seconds since this process started (its interpreter and imports included), for the
    start-up log lines: a restart is judged from the process's start, not from main()."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as fh:
            return float(fh.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def register_until_done(store: Store, rec: records.HostRecord, ttl: int,
                        stop: threading.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        try:
            store.register_host(rec, ttl)
            return
        except CniError as err:
            log.warning("cannot register with etcd yet (%s); retrying in %.1fs", err, delay)
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
