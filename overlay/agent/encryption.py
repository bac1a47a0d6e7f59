"""Encrypted networks on this host: the WireGuard device, its peers from the host records, and
the answer the reconciler asks for every remote endpoint of an encrypted network.

Design (docs/encryption.md has the reasoning and the figures). Every host has one WireGuard
device with an address in wireguard_subnet derived from its VTEP (100.64.0.0/16 and VTEP
192.168.56.11 -> 100.64.56.11). The VXLAN of an encrypted network is sent with tun_dst = the
peer's WireGuard address instead of its VTEP: the kernel routes that outer packet into the
device, which encrypts it to the peer's VTEP on UDP 51820. On receive, the flows admit an
encrypted network's VNI only with tun_src = a peer's WireGuard address, which only WireGuard
can deliver (wireguard/guard.py drops forgeries from the underlay). Nothing else changes: the
dataplane keeps building the same flows, from a RemoteEndpoint whose "VTEP" is the peer's
WireGuard address (see `sealed`).

Fail closed: a host is a peer only while its record carries a usable key, address and port
(wireguard/peers.py). Until then, and as soon as that stops, `sealed(host)` is None and the
reconciler installs no flow towards that host for any encrypted network: no traffic, never
clear text. The order on a change keeps it so: the device learns a peer before the flows name
it, and the flows stop naming a peer before the device forgets it.

Where the host cannot encrypt (netdev, or no wireguard module) `unavailable` says why; ADD of
an encrypted network is then refused (cni/steps.py check_encryption) and the host publishes no
key, so its peers send it nothing encrypted either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from overlay.agent import verify
from overlay.agent.config import AgentConfig
from overlay.agent.metrics import Metrics
from overlay.agent.node import Node
from overlay.agent.wgmetrics import PeerView, WireGuardCollector
from overlay.errors import CniError, Code
from overlay.model import WIREGUARD_OVERHEAD_V4
from overlay.store import records as r
from overlay.store.etcd import Store
from overlay.store.stream import Change
from overlay.store.watch import PrefixWatch
from overlay.wireguard import device, guard, keys
from overlay.wireguard.device import Device, PeerStats
from overlay.wireguard.peers import NotAPeer, Peer, diff, duplicate_keys, parse_peer, wg_address

log = logging.getLogger(__name__)


def start(cfg: AgentConfig, node: Node, metrics: Metrics) -> Encryption:
    """This host's encryption, started (key, device, guard) where it can run, with its
    metrics registered. It never stops the agent: where WireGuard cannot be set up, the
    unencrypted networks run and the encrypted ones are refused (`unavailable` says why)."""
    reason = device.unavailable(node.datapath, cfg.wireguard_interface)
    dev = None
    if not reason:
        try:
            address = wg_address(cfg.wireguard_subnet, node.vtep)
        except ValueError as exc:
            reason = str(exc)
    if reason:
        log.info("encrypted networks are not available on this host: %s", reason)
    else:
        dev = Device(ifname=cfg.wireguard_interface, address=address,
                     subnet=cfg.wireguard_subnet, port=cfg.wireguard_port,
                     mtu=node.underlay_mtu - WIREGUARD_OVERHEAD_V4)
    enc = Encryption(cfg=cfg, device=dev, unavailable=reason)
    try:
        enc.start()
    except Exception as err:  # noqa: BLE001 (whatever netlink or the key file raise)
        # Unencrypted networks still run here; encrypted ones are refused and get nothing.
        log.error("encrypted networks are not available on this host: WireGuard could not "
                  "be set up: %s", err)
        enc = Encryption(cfg=cfg, device=None, unavailable=f"WireGuard could not be set up "
                         f"({err}); see the agent's log")
    metrics.registry.register(WireGuardCollector(enc.peers))
    return enc


class WgDevice(Protocol):
    """What Encryption needs of the device (wireguard/device.py; a fake in wireguard/testing.py)."""

    ifname: str
    address: str
    subnet: str
    port: int

    def ensure(self, private_b64: str) -> None: ...
    def set_private_key(self, private_b64: str) -> None: ...
    def public_key(self) -> str: ...
    def set_peer(self, peer: Peer) -> None: ...
    def remove_peer(self, public_b64: str) -> None: ...
    def peers(self) -> list[PeerStats]: ...
    def exists(self) -> bool: ...


class Encryption:
    def __init__(self, *, cfg: AgentConfig, device: WgDevice | None, unavailable: str = "",
                 guard_rule: Callable[[str, str], None] = guard.ensure) -> None:
        self._cfg = cfg
        self._host = self.host = cfg.host
        self._guard = guard_rule
        self._on_peer_changed: Callable[[str], None] = lambda host: None
        self._lock = threading.Lock()
        self._wanted: dict[str, Peer] = {}     # hosts whose records make usable peers
        self._bad: dict[str, str] = {}         # host -> why its record makes no peer
        self._on_device: dict[str, Peer] = {}  # what the device holds
        self._pair: keys.KeyPair | None = None
        self._device = device
        self.unavailable = unavailable if device is None else ""
        self.address = device.address if device is not None else ""

    def set_on_peer_changed(self, fn: Callable[[str], None]) -> None:
        self._on_peer_changed = fn

    def start(self) -> None:
        """The key pair (kept across restarts), the device and the receive guard. Raises
        CniError or keys.KeyFileError; the agent does not start without them when it can
        encrypt (it would otherwise publish a key it cannot use)."""
        if self._device is None:
            return
        self._pair = keys.load_or_create(self._cfg.wireguard_key_file)
        self._device.ensure(self._pair.private_b64)
        self._guard(self._device.ifname, self._device.subnet)
        kernel_says = self._device.public_key()
        if kernel_says and kernel_says != self._pair.public_b64:
            raise CniError(Code.INTERNAL, "WireGuard: the kernel derived another public key "
                           f"({kernel_says}) than ours ({self._pair.public_b64})")
        log.info("WireGuard %s up: address %s, port %d, public key %s (fingerprint %s)",
                 self._device.ifname, self.address, self._device.port, self._pair.public_b64,
                 keys.fingerprint(self._pair.public_b64))

    def host_record(self, rec: r.HostRecord) -> r.HostRecord:
        """Our host record with what peers need: the public key, address and port."""
        if self._device is None or self._pair is None:
            return rec
        return r.HostRecord(rec.host, rec.vtep, rec.datapath, rec.agent_id,
                            self._pair.public_b64, self.address, self._device.port)

    def sealed(self, host: str) -> str | None:
        """The tunnel destination for an encrypted network's traffic to `host`: its WireGuard
        address while the device holds it as a peer, else None (no traffic)."""
        peer = self._on_device.get(host)  # one dict read: no lock (called under the reconciler's)
        return peer.address if peer is not None else None

    # --- peers from host records --------------------------------------------------------------

    def on_hosts(self, changes: list[Change]) -> None:
        """Host records changed: peers follow. A deleted record (lease expired, agent
        restarting) keeps its peer until prune() finds the host gone for good."""
        if self._device is None:
            return
        with self._lock:
            for change in changes:
                host = change.key[len(r.HOSTS):]
                if host == self._host or change.value is None:
                    continue
                try:
                    vtep = verify.parse_host(change.key, change.value)
                    peer = parse_peer(host, verify.decode(change.value), vtep,
                                      self._cfg.wireguard_subnet)
                except (NotAPeer, verify.Rejected) as exc:
                    if self._bad.get(host) != str(exc):
                        log.warning("no encrypted traffic with host %s: %s", host, exc)
                    self._bad[host] = str(exc)
                    self._wanted.pop(host, None)
                    continue
                self._bad.pop(host, None)
                self._wanted[host] = peer
            self._converge()

    def prune(self, live: set[str]) -> None:
        """Forget peers of hosts the reconciler no longer knows (their grace is over)."""
        if self._device is None:
            return
        with self._lock:
            for host in set(self._wanted) - live:
                del self._wanted[host]
            self._converge()

    def resync(self, live: set[str]) -> None:
        """Every resync round: the device (re)made if someone deleted it, peers again."""
        if self._device is None or self._pair is None:
            return
        try:
            if not self._device.exists():
                log.warning("WireGuard device %s is gone; making it again", self._device.ifname)
                with self._lock:
                    self._device.ensure(self._pair.private_b64)
                    self._on_device.clear()
            self._guard(self._device.ifname, self._device.subnet)
            self.prune(live)
            self._drop_unknown_peers()
        except CniError as err:
            log.warning("WireGuard check failed: %s", err)

    def _drop_unknown_peers(self) -> None:
        """Peers on the device that no host record asks for (left by an earlier run of the
        agent, or added by hand) go: only etcd's hosts are peers. Not before the first
        snapshot is in (the agent's loop calls resync after start-up)."""
        assert self._device is not None
        with self._lock:
            known = {p.public_key for p in self._on_device.values()}
            for stats in self._stats():
                if stats.public_key not in known:
                    log.warning("removing WireGuard peer %s, which no host record names",
                                keys.fingerprint(stats.public_key))
                    self._device.remove_peer(stats.public_key)

    def _converge(self) -> None:
        """(Under the lock.) The device's peers made equal to the wanted ones; hosts whose
        tunnel destination changed are handed to the reconciler."""
        assert self._device is not None and self._pair is not None
        want = {h: p for h, p in self._wanted.items()}
        for host in duplicate_keys(want, self._pair.public_b64):
            self._bad[host] = f"host {host} publishes a public key another host also publishes"
            del want[host]
        changes = diff(self._on_device, want)
        changed: set[str] = set()
        gone = [p for p in changes.remove if p.host not in want]
        for peer in gone:  # flows first, then the device
            self._on_device.pop(peer.host, None)
            self._on_peer_changed(peer.host)
        for peer in changes.add:  # a new key takes the peer's allowed address over at once
            try:
                self._device.set_peer(peer)
            except CniError as err:
                log.warning("%s", err)
                if self._on_device.pop(peer.host, None) is not None:
                    changed.add(peer.host)
                continue
            old = self._on_device.get(peer.host)
            self._on_device[peer.host] = peer
            if old is None or old.address != peer.address:
                changed.add(peer.host)
        for peer in changes.remove:  # gone hosts, and the old keys of rotated ones
            try:
                self._device.remove_peer(peer.public_key)
            except CniError as err:
                log.warning("%s", err)
        for host in changed:
            self._on_peer_changed(host)

    # --- rotation, observation ----------------------------------------------------------------

    def rotate(self) -> keys.KeyPair | None:
        """A new key pair: saved, given to the device, returned for the host record. Peers
        follow once they read the record; until then their packets to us fail to decrypt."""
        if self._device is None:
            return None
        with self._lock:
            pair = keys.KeyPair.generate()
            keys.save(self._cfg.wireguard_key_file, pair)
            self._device.set_private_key(pair.private_b64)
            self._pair = pair
        log.info("WireGuard key rotated: new public key %s (fingerprint %s)", pair.public_b64,
                 keys.fingerprint(pair.public_b64))
        return pair

    def peers(self) -> list[PeerView]:
        if self._device is None:
            return []
        by_key = {p.public_key: p for p in list(self._on_device.values())}
        out = []
        for stats in self._stats():
            peer = by_key.get(stats.public_key)
            out.append(PeerView(peer.host if peer else "?", keys.fingerprint(stats.public_key),
                                peer.address if peer else "", stats.last_handshake,
                                stats.rx_bytes, stats.tx_bytes))
        return out

    def _stats(self) -> list[PeerStats]:
        assert self._device is not None
        try:
            return self._device.peers()
        except CniError as err:
            log.warning("%s", err)
            return []

    def problems(self) -> list[str]:
        """For `overlayctl doctor`: hosts that get no encrypted traffic, and why."""
        with self._lock:
            return [f"encryption: {why}" for _, why in sorted(self._bad.items())]



def follow_rotations(*, store: Store, encryption: Encryption,
                     record: r.HostRecord) -> Callable[[], None]:
    """Serve `overlayctl hosts rotate-key` requests for this host (records.rotation_key): a
    new key pair, the host record republished (peers follow), the request deleted. A request
    found at start is served too. Returns how to stop following (nothing to follow where the
    host cannot encrypt)."""
    if encryption.unavailable:
        return lambda: None
    key = r.rotation_key(encryption.host)

    def on_changes(changes: list[Change]) -> None:
        for change in changes:
            if change.key != key or change.value is None:
                continue
            if encryption.rotate() is not None:  # peers follow our record
                store.update_host(encryption.host_record(record))
            try:  # served: deleted, unless a newer request replaced it meanwhile
                client = store.client
                tx = client.transactions
                client.transaction(compare=[tx.value(key) == change.value],
                                   success=[tx.delete(key)], failure=[])
            except Exception as exc:  # noqa: BLE001 (etcd down: served again at the next start)
                log.warning("could not delete the served rotation request: %s", exc)
    watch = PrefixWatch(store=store, prefix=key, on_changes=on_changes)
    watch.start()
    return watch.stop
