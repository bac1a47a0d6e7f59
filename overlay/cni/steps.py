"""What ADD, DEL and CHECK share: the lock per attachment, the stopwatch of their log lines,
the rollback of a failed ADD, and the rules read off a netconf (bridge, MTU, gateway)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from overlay.cni.netconf import NetConf
from overlay.cni.ports import HostInfo
from overlay.errors import CniError, Code
from overlay.gateway.manager import spec_for
from overlay.gateway.spec import GatewaySpec
from overlay.ipam.allocator import Assigned
from overlay.model import container_mtu

log = logging.getLogger("overlay.cni.service")  # the logger these lines always had

Undo = list[Callable[[], object]]  # steps to undo, in the order they were registered


class Stopwatch:
    """Milliseconds per step, for the log line of each call: where does ADD spend its time?"""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._laps.append((name, (now - self._last) * 1000))
        self._last = now

    def __str__(self) -> str:
        total = sum(ms for _, ms in self._laps)
        return f"{total:.1f} ms: " + " ".join(f"{n} {ms:.1f}" for n, ms in self._laps)


class StripedLock:
    """Calls for the same container interface are serialised; different ones run in
    parallel (bar a hash collision among the stripes, which only costs waiting)."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, key: str) -> threading.Lock:
        digest = hashlib.blake2s(key.encode(), digest_size=4).digest()
        return self._locks[int.from_bytes(digest, "big") % len(self._locks)]


def roll_back(undo: Undo, owner: str) -> None:
    """Run every undo step, latest first, whatever the others do: the caller re-raises the
    failure that made it roll back, which is the one the runtime must see."""
    for step in reversed(undo):
        try:
            step()
        except CniError as err:  # keep undoing; report the original failure
            log.warning("rollback step failed for %s: %s", owner, err)
        except Exception:
            log.exception("rollback step failed for %s", owner)


def is_dhcp_server(conf: NetConf, assigned: Sequence[Assigned]) -> bool:
    """Does the netconf name one of this attachment's addresses in `dhcpServers`?"""
    return any(a.address.ip in conf.dhcp_servers for a in assigned)


def check_bridge(conf: NetConf, host: HostInfo) -> None:
    if conf.bridge != host.bridge:
        raise CniError(Code.INVALID_NETCONF,
                       f"bridge {conf.bridge!r} is not managed by the overlay agent on "
                       f"{host.name}; it manages {host.bridge!r}")


def encrypted(conf: NetConf, host: HostInfo) -> bool:
    """The netconf's `encrypted`, else the agent's default (recorded with the network)."""
    return host.encrypt_by_default if conf.encrypted is None else conf.encrypted


def check_encryption(conf: NetConf, host: HostInfo) -> None:
    """An encrypted network is refused before anything exists where WireGuard cannot carry it:
    its traffic would otherwise leave in clear text, or not at all."""
    if encrypted(conf, host) and host.encryption_unavailable:
        said = "the netconf says" if conf.encrypted else "the agent's encrypt_networks default makes"
        raise CniError(Code.UNSUPPORTED_FIELD,
                       f"network {conf.name!r} is encrypted ({said} \"encrypted\": true) but host "
                       f"{host.name} cannot encrypt: {host.encryption_unavailable}",
                       "encrypted networks need OVS's kernel datapath and the wireguard module "
                       "(docs/encryption.md); attach this container on such a host, or use an "
                       "unencrypted network")


def mtu(conf: NetConf, host: HostInfo) -> int:
    return container_mtu(conf.mtu, host.underlay_mtu, encrypted=encrypted(conf, host),
                         ipv6_underlay=":" in host.vtep)


def gateway_spec(conf: NetConf, host: HostInfo) -> GatewaySpec | None:
    """The network's gateway on this host, if it has one (an IPv4 range, built-in IPAM)."""
    if conf.gateway is None:
        return None
    return spec_for(conf.name, conf.vni, conf.gateway, conf.ip_masq, mtu(conf, host))
