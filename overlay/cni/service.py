"""ADD, DEL and CHECK: the steps of attaching a container, in order, each undone on failure.

ADD: validate -> record the network (etcd) -> allocate an IP (etcd txn) -> veth into the netns
-> port on br-int (waits for its ofport) -> endpoint record (etcd) -> local flows. If a step
fails, the steps before it are rolled back in reverse order, so a failed ADD leaves no veth,
no OVS port, no IP allocation and no endpoint record behind.

DEL undoes every step whether or not the others are still there, and succeeds when there is
nothing left to undo. Calls for the same container interface are serialised by a striped lock;
different containers proceed in parallel.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from overlay.cni.errors import CniError, Code
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.result import Attachment, build_result, encode
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort
from overlay.ipam.allocator import EtcdIpam
from overlay.netlink import veth
from overlay.ovs.ovsdb import Ovsdb
from overlay.store.etcd import Store
from overlay.store.records import EndpointRecord, NetworkRecord, owner_of

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8

# external_ids on the OVS Interface of every endpoint: enough to rebuild local flows from
# OVSDB alone when etcd is unreachable at agent start.
EXT_CONTAINER, EXT_IFNAME, EXT_NETNS, EXT_NETWORK = (
    "overlay-container-id", "overlay-ifname", "overlay-netns", "overlay-network")
EXT_VNI, EXT_IP, EXT_MAC = "overlay-vni", "overlay-ip", "overlay-mac"


@dataclass(frozen=True)
class HostInfo:
    name: str
    bridge: str
    underlay_mtu: int


def void(_: object) -> None:
    """Discards a result, so that a call fits where an undo step is expected."""


def endpoint_key(network: str, container_id: str, ifname: str) -> str:
    return f"{network}/{container_id}/{ifname}"


class _Stopwatch:
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
        return f"{total:.0f} ms: " + " ".join(f"{n} {ms:.0f}" for n, ms in self._laps)


class _StripedLock:
    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, key: str) -> threading.Lock:
        digest = hashlib.blake2s(key.encode(), digest_size=4).digest()
        return self._locks[int.from_bytes(digest, "big") % len(self._locks)]


class CniService:
    def __init__(self, *, host: HostInfo, ovs: Ovsdb, dataplane: Dataplane, store: Store,
                 ipam: EtcdIpam) -> None:
        self._host = host
        self._ovs = ovs
        self._dataplane = dataplane
        self._store = store
        self._ipam = ipam
        self._lock = _StripedLock()

    def _check_bridge(self, conf: NetConf) -> None:
        if conf.bridge != self._host.bridge:
            raise CniError(Code.INVALID_NETCONF,
                           f"bridge {conf.bridge!r} is not managed by the overlay agent on "
                           f"{self._host.name}; it manages {self._host.bridge!r}")

    # --- ADD ----------------------------------------------------------------------------------

    def add(self, env: CniEnv, conf: NetConf) -> bytes:
        self._check_bridge(conf)
        assert conf.ipam is not None and conf.subnet is not None
        owner = owner_of(env.container_id, env.ifname)
        host_if = veth.hostside_name(env.container_id, env.ifname)
        with self._lock(owner):
            if veth.link_exists(host_if) or self._store.get_endpoint(conf.name, env.container_id,
                                                                     env.ifname):
                raise CniError(Code.ALREADY_ATTACHED,
                               f"container {env.container_id} interface {env.ifname} is already "
                               f"attached to {conf.name}", "run DEL for it before ADD again")
            undo: list[Callable[[], None]] = []
            try:
                return self._add_steps(env, conf, owner, undo)
            except BaseException:
                for step in reversed(undo):
                    try:
                        step()
                    except Exception:  # keep undoing; report the original failure
                        log.exception("rollback step failed for %s", owner)
                raise

    def _add_steps(self, env: CniEnv, conf: NetConf, owner: str,
                   undo: list[Callable[[], None]]) -> bytes:
        assert conf.ipam is not None
        t = _Stopwatch()
        self._store.ensure_network(NetworkRecord(conf.name, conf.vni, str(conf.subnet)))
        t.lap("network")

        ip, rng = self._ipam.allocate(conf.name, owner, conf.ipam)
        undo.append(lambda: self._ipam.release(conf.name, owner))
        t.lap("ipam")
        address = ipaddress.ip_interface(f"{ip}/{rng.subnet.prefixlen}")
        mtu = conf.mtu or self._host.underlay_mtu - VXLAN_OVERHEAD

        link = veth.create_container_link(container_id=env.container_id, netns=env.netns,
                                          ifname=env.ifname, mtu=mtu, address=address,
                                          routes=conf.ipam.routes)
        undo.append(lambda: void(veth.delete_host_link(link.host_ifname)))
        t.lap("veth")

        ofport = self._ovs.ensure_port(self._host.bridge, link.host_ifname, external_ids={
            EXT_CONTAINER: env.container_id, EXT_IFNAME: env.ifname, EXT_NETNS: env.netns,
            EXT_NETWORK: conf.name, EXT_VNI: str(conf.vni), EXT_IP: str(ip), EXT_MAC: link.mac})
        undo.append(lambda: self._ovs.delete_port(link.host_ifname))
        t.lap("ovs-port")

        rec = EndpointRecord(network=conf.name, container_id=env.container_id, ifname=env.ifname,
                             host=self._host.name, vni=conf.vni, ip=str(address), mac=link.mac,
                             port=link.host_ifname, netns=env.netns)
        self._store.put_endpoint(rec)
        undo.append(lambda: self._store.delete_endpoint(conf.name, env.container_id, env.ifname))
        t.lap("endpoint")

        key = endpoint_key(conf.name, env.container_id, env.ifname)
        self._dataplane.install_endpoint(key, LocalPort(conf.vni, link.mac, str(ip), ofport))
        undo.append(lambda: self._dataplane.remove_endpoint(key))
        t.lap("flows")

        result = build_result(conf.cni_version, Attachment(
            host_ifname=link.host_ifname, host_mac=link.host_mac, ifname=env.ifname,
            mac=link.mac, netns=env.netns, address=address, gateway=rng.gateway,
            routes=conf.ipam.routes, mtu=mtu))
        log.info("ADD %s %s -> %s %s port %s (%s)", conf.name, owner, address, link.mac, ofport, t)
        return encode(result)

    # --- DEL ----------------------------------------------------------------------------------

    def delete(self, env: CniEnv, conf: NetConf) -> bytes:
        owner = owner_of(env.container_id, env.ifname)
        host_if = veth.hostside_name(env.container_id, env.ifname)
        with self._lock(owner):
            self._dataplane.remove_endpoint(endpoint_key(conf.name, env.container_id, env.ifname))
            self._ovs.delete_port(host_if)
            veth.delete_host_link(host_if)
            self._store.delete_endpoint(conf.name, env.container_id, env.ifname)
            self._ipam.release(conf.name, owner)
        log.info("DEL %s %s", conf.name, owner)
        return b""

    # --- CHECK --------------------------------------------------------------------------------

    def check(self, env: CniEnv, conf: NetConf) -> bytes:
        self._check_bridge(conf)
        owner = owner_of(env.container_id, env.ifname)
        with self._lock(owner):
            rec = self._store.get_endpoint(conf.name, env.container_id, env.ifname)
            if rec is None:
                raise CniError(Code.UNKNOWN_CONTAINER,
                               f"container {env.container_id} interface {env.ifname} is not "
                               f"attached to {conf.name}")
            problems = self._differences(env, conf, rec)
        if problems:
            raise CniError(Code.CHECK_FAILED,
                           f"container {env.container_id} interface {env.ifname} on "
                           f"{conf.name}: " + "; ".join(problems))
        return b""

    def _differences(self, env: CniEnv, conf: NetConf, rec: EndpointRecord) -> list[str]:
        problems = []
        if rec.vni != conf.vni:
            problems.append(f"recorded vxlanID {rec.vni} differs from netconf {conf.vni}")
        link = veth.inspect_container_link(env.netns, env.ifname)
        if link is None:
            problems.append(f"interface {env.ifname} is missing from {env.netns}")
        else:
            if link.mac != rec.mac:
                problems.append(f"MAC is {link.mac}, expected {rec.mac}")
            if rec.ip not in link.addresses:
                problems.append(f"address {rec.ip} is missing (has {', '.join(link.addresses)})")
            if not link.up:
                problems.append("interface is down")
        if not self._ovs.port_exists(rec.port):
            problems.append(f"OVS port {rec.port} is missing from {self._host.bridge}")
        holder = self._store.allocations(conf.name).get(ipaddress.ip_address(rec.address))
        if holder != owner_of(env.container_id, env.ifname):
            problems.append(f"IP allocation of {rec.address} is held by {holder!r}")
        if endpoint_key(conf.name, env.container_id, env.ifname) not in self._dataplane.local_keys():
            problems.append("no flows are installed for the endpoint")
        return problems
