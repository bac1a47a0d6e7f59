"""ADD, DEL and CHECK: the steps of attaching a container, in order, each undone on failure.

ADD: validate -> record the network (etcd) -> addresses (etcd transactions) -> veth into the
netns -> port on br-int (waits for its ofport) -> endpoint record (etcd) -> local flows; the
network's gateway on this host (overlay/gateway/, the first container of a network creates it)
is made on another thread beside these steps, and the flows wait for it. With a delegated IPAM
plugin the link comes first, as in the reference `bridge` plugin: veth (up, no address) ->
[dhcp: port, record without address, DHCP-only flows] -> the plugin -> addresses and routes on
the link -> port, record, flows (see _add_link_first, leases.py).

Each step's undo is registered *before* the step runs (every undo is idempotent), so a step
that fails half-way is undone too: a failed ADD leaves no veth, no OVS port, no IP allocation
(or lease) and no endpoint record behind.

DEL undoes every step whether or not the others are still there, and succeeds when there is
nothing left to undo. Calls for the same container interface are serialised by a striped lock;
different containers proceed in parallel. STATUS and GC live in housekeeping.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from overlay.cni import checks, delegate, leases, requests
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.result import Attachment, build_result, encode
from overlay.cni.subnets import SubnetGuard
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError, Code
from overlay.gateway.manager import GatewayManager, spec_for
from overlay.gateway.spec import GatewaySpec
from overlay.ipam.allocator import Assigned, EtcdIpam
from overlay.model import Route, container_mtu, endpoint_key, mac_for
from overlay.netlink import veth
from overlay.ovs import portschema
from overlay.ovs.ovsdb import Ovsdb
from overlay.store.etcd import Store
from overlay.store.records import EndpointRecord, NetworkRecord, owner_of

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class HostInfo:
    name: str
    bridge: str
    underlay_mtu: int
    vtep: str = ""  # written into endpoint records (see EndpointRecord.vtep)


def is_dhcp_server(conf: NetConf, assigned: Sequence[Assigned]) -> bool:
    """Does the netconf name one of this attachment's addresses in `dhcpServers`?"""
    return any(a.address.ip in conf.dhcp_servers for a in assigned)


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


class StripedLock:
    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, key: str) -> threading.Lock:
        digest = hashlib.blake2s(key.encode(), digest_size=4).digest()
        return self._locks[int.from_bytes(digest, "big") % len(self._locks)]


class NetworkInterest(Protocol):
    """Following a network's endpoints in etcd (agent/networks.py)."""

    def join(self, network: str) -> None: ...


class CniService:
    def __init__(self, *, host: HostInfo, ovs: Ovsdb, dataplane: Dataplane, store: Store,
                 ipam: EtcdIpam, networks: NetworkInterest, gateways: GatewayManager,
                 subnets: SubnetGuard) -> None:
        self.host = host
        self.subnets = subnets
        self.gateways = gateways
        self.ovs = ovs
        self.dataplane = dataplane
        self.store = store
        self.ipam = ipam
        self.networks = networks
        self.lock = StripedLock()
        # Steps of an ADD or DEL that run beside its others (_beside; the gateway in _detach).
        # None waits for another task of this pool, so a full pool only queues: an ADD submits
        # up to three, a DEL one, and the gRPC pool serves 16 calls at once.
        self._background = futures.ThreadPoolExecutor(max_workers=8,
                                                      thread_name_prefix="cni-bg")

    def gateway_spec(self, conf: NetConf) -> GatewaySpec | None:
        """The network's gateway on this host, if it has one (an IPv4 range, built-in IPAM)."""
        if conf.gateway is None:
            return None
        return spec_for(conf.name, conf.vni, conf.gateway, conf.ip_masq, self.mtu(conf))

    def check_bridge(self, conf: NetConf) -> None:
        if conf.bridge != self.host.bridge:
            raise CniError(Code.INVALID_NETCONF,
                           f"bridge {conf.bridge!r} is not managed by the overlay agent on "
                           f"{self.host.name}; it manages {self.host.bridge!r}")

    # --- ADD ----------------------------------------------------------------------------------

    def add(self, env: CniEnv, conf: NetConf) -> bytes:
        self.check_bridge(conf)
        owner = owner_of(env.container_id, env.ifname)
        with self.lock(owner):
            t = _Stopwatch()
            self._precheck(env, conf)
            # Before anything exists: a subnet that would break this host is refused (7).
            self.subnets.check(conf)
            t.lap("precheck")
            undo: list[Callable[[], object]] = []
            try:
                return self._add_steps(env, conf, owner, undo, t)
            except BaseException:
                for step in reversed(undo):
                    try:
                        step()
                    except CniError as err:  # keep undoing; report the original failure
                        log.warning("rollback step failed for %s: %s", owner, err)
                    except Exception:
                        log.exception("rollback step failed for %s", owner)
                raise

    def _precheck(self, env: CniEnv, conf: NetConf) -> None:
        """ALREADY_ATTACHED if the attachment exists here, or its record names another host
        (container IDs clash across hosts: say which, since DEL here will not touch it)."""
        rec = self.store.get_endpoint(conf.name, env.container_id, env.ifname)
        what = f"container {env.container_id} interface {env.ifname}"
        if rec is not None and rec.host != self.host.name:
            raise CniError(Code.ALREADY_ATTACHED, f"{what} is already attached on host "
                           f"{rec.host}", "container IDs must be unique across the cluster; "
                           "DEL it there, or use another container ID")
        if rec is not None or veth.link_exists(veth.hostside_name(env.container_id,
                                                                   env.ifname)):
            raise CniError(Code.ALREADY_ATTACHED, f"{what} is already attached",
                           "run DEL for it before ADD again")

    def _beside(self, undo: list[Callable[[], object]], step: Callable[[], object],
                undo_step: Callable[[object], object]) -> Future[object]:
        """Run `step` on another thread; its undo (registered now, as for every step) waits for
        it to end and then runs `undo_step(its result)`, with None if it failed (a step may
        fail half-way, so its undo still runs). The caller joins it with .result(), whose
        exception is then the ADD's failure."""
        pending = self._background.submit(step)

        def undo_it() -> None:
            futures.wait([pending])
            undo_step(pending.result() if pending.exception() is None else None)
        undo.append(undo_it)
        return pending

    def _add_steps(self, env: CniEnv, conf: NetConf, owner: str,
                   undo: list[Callable[[], object]], t: _Stopwatch) -> bytes:
        mac = requests.requested_mac(conf, env)
        wanted_ips = requests.requested_ips(conf, env)
        key = endpoint_key(conf.name, env.container_id, env.ifname)
        gateway = self.gateway_spec(conf)
        # Steps that wait on another process (etcd, ovsdb-server, the kernel) and that no
        # step before their join depends on run beside the others (see _beside): on a loaded
        # 2-core host the serial sum was most of an ADD.
        pending_gateway: Future[object] | None = None
        if gateway is not None:
            # The network's first container here creates the gateway (an OVS port, addresses,
            # routes, iptables rules: tens of ms); only the flows need it.
            pending_gateway = self._beside(undo, lambda: self.gateways.acquire(key, gateway),
                                           lambda _: self.gateways.release(key))
        network = NetworkRecord(conf.name, conf.vni, conf.subnets_text)
        # Recording the network (one etcd transaction) goes beside the allocation; it must
        # have succeeded before anything is created on the host.
        pending_network = self._beside(
            undo, lambda: self.store.ensure_network(network),
            lambda created: created and self.store.drop_network_if_unused(network))
        if conf.ipam.delegated:
            pending_network.result()
            t.lap("network")
            return self._add_link_first(env, conf, owner, undo, t, mac, pending_gateway)

        undo.append(lambda: self.ipam.release(conf.name, owner))
        assigned = self.ipam.allocate(conf.name, owner, conf.ipam, wanted_ips)
        routes = conf.ipam.routes
        t.lap("ipam")
        pending_network.result()
        t.lap("network (rest)")
        if gateway is not None and not conf.ipam.routes_given:
            # README: a default route via the gateway unless the netconf lists its own routes.
            routes = (Route(ipaddress.IPv4Network("0.0.0.0/0"), gateway.address.ip), *routes)
        host_if = veth.hostside_name(env.container_id, env.ifname)
        if mac is None:
            mac = mac_for(assigned[0].address.ip)
        port_mac = mac

        # The OVS port is added (and its ofport awaited) as soon as the host end exists,
        # while the container end is configured inside the netns.
        pending_port: list[Future[object]] = []
        undo.append(lambda: veth.delete_host_link(host_if))
        link = veth.create_container_link(
            container_id=env.container_id, netns=env.netns, ifname=env.ifname,
            mtu=self.mtu(conf), addresses=[a.address for a in assigned], routes=routes, mac=mac,
            host_end_ready=lambda: pending_port.append(self._beside(
                undo, lambda: self._ensure_port(env, conf, host_if, port_mac, assigned),
                lambda _: self.ovs.delete_port(host_if))))
        t.lap("veth")
        ofport = pending_port[0].result() if pending_port else None
        if not isinstance(ofport, int) or link.mac != mac:  # the kernel kept another MAC
            ofport = self._port(env, conf, link, assigned, undo)
        t.lap("ovs-port (rest)")
        self._publish(env, conf, link, assigned, routes, undo)
        t.lap("endpoint")
        return self._finish(env, conf, owner, link, ofport, assigned, routes, routes, undo, t,
                            pending_gateway)

    def _add_link_first(self, env: CniEnv, conf: NetConf, owner: str,
                        undo: list[Callable[[], object]], t: _Stopwatch, mac: str | None,
                        pending_gateway: Future[object] | None) -> bytes:
        """Delegated IPAM, in the order of the reference `bridge` plugin: the link exists, up
        and without an address, before the plugin runs (dhcp sends its DISCOVER from it).

        For dhcp the attachment is also published before the lease: the endpoint record with
        MAC and host but no address (so other hosts send unicast OFFER/ACK for that MAC to this
        host's VTEP) and local flows that admit only the client's DHCP broadcasts from
        0.0.0.0. The lease then updates both, as any ADD would write them.
        """
        delegate.find_plugin(conf.ipam.type, env.path)  # not there: nothing to undo yet
        host_if = veth.hostside_name(env.container_id, env.ifname)
        undo.append(lambda: veth.delete_host_link(host_if))
        link = veth.create_container_link(container_id=env.container_id, netns=env.netns,
                                          ifname=env.ifname, mtu=self.mtu(conf), addresses=[],
                                          routes=[], mac=mac or leases.lease_mac(
                                              env.container_id, env.ifname))
        t.lap("veth")
        dhcp = leases.is_dhcp(conf)
        if dhcp:
            ofport = self._port(env, conf, link, [], undo)
            self._publish(env, conf, link, [], [], undo)
            key = endpoint_key(conf.name, env.container_id, env.ifname)
            self.networks.join(conf.name)
            undo.append(lambda: self.dataplane.remove_endpoint(key))
            self.dataplane.install_endpoint(key, LocalPort(conf.vni, link.mac, (), ofport, True))
            t.lap("pre-lease")
        # Registered after the link's undo, so a rollback releases the lease (dhcp: a DHCPRELEASE
        # sent from the link, through the flows) before the link and flows go.
        undo.append(lambda: delegate.run("DEL", conf, env))
        lease = delegate.parse_result(delegate.run("ADD", conf, env) or {})
        t.lap("ipam")
        routes = leases.chosen_routes(conf, lease.routes)
        installed = leases.installed_routes(routes, lease.assigned)
        veth.add_container_addresses(netns=env.netns, ifname=env.ifname,
                                     addresses=[a.address for a in lease.assigned],
                                     routes=installed)
        t.lap("addresses")
        # dhcp: the port is there already; this updates its external_ids to the leased address.
        ofport = self._port(env, conf, link, lease.assigned, None if dhcp else undo)
        t.lap("ovs-port")
        # dhcp: the record and flows of before the lease are replaced (their undo is registered)
        self._publish(env, conf, link, lease.assigned, installed, undo, registered=dhcp)
        t.lap("endpoint")
        return self._finish(env, conf, owner, link, ofport, lease.assigned, routes, installed,
                            undo, t, pending_gateway)

    def mtu(self, conf: NetConf) -> int:
        return container_mtu(conf.mtu, self.host.underlay_mtu)

    def _port(self, env: CniEnv, conf: NetConf, link: veth.ContainerLink,
              assigned: Sequence[Assigned], undo: list[Callable[[], object]] | None) -> int:
        """The host end on the bridge (or its external_ids updated), with what names it.
        `undo` None: the port's removal is registered already."""
        if undo is not None:
            undo.append(lambda: self.ovs.delete_port(link.host_ifname))
        return self._ensure_port(env, conf, link.host_ifname, link.mac, assigned)

    def _ensure_port(self, env: CniEnv, conf: NetConf, host_if: str, mac: str,
                     assigned: Sequence[Assigned]) -> int:
        # Enough to rebuild local flows from OVSDB alone when etcd is unreachable at agent start.
        ids = portschema.PortIds(
            portschema.PortOwner(conf.name, env.container_id, env.ifname, env.netns), conf.vni,
            tuple(str(a.address.ip) for a in assigned), mac, conf.ipam.type,
            is_dhcp_server(conf, assigned))
        return self.ovs.ensure_port(self.host.bridge, host_if,
                                    external_ids=portschema.encode(ids))

    def _publish(self, env: CniEnv, conf: NetConf, link: veth.ContainerLink,
                 assigned: Sequence[Assigned], routes: Sequence[Route],
                 undo: list[Callable[[], object]], *, registered: bool = False) -> None:
        rec = EndpointRecord(network=conf.name, container_id=env.container_id, ifname=env.ifname,
                             host=self.host.name, vni=conf.vni,
                             ips=[str(a.address) for a in assigned], mac=link.mac,
                             port=link.host_ifname, netns=env.netns, mtu=self.mtu(conf),
                             routes=[{"dst": str(r.dst), "gw": str(r.gw or "")} for r in routes],
                             ipam=conf.ipam.type, vtep=self.host.vtep)
        if not registered:
            undo.append(lambda: self.store.delete_endpoint(
                conf.name, env.container_id, env.ifname, host=self.host.name))
        self.store.put_endpoint(rec)

    def _finish(self, env: CniEnv, conf: NetConf, owner: str, link: veth.ContainerLink,
                ofport: int, assigned: Sequence[Assigned], routes: Sequence[Route],
                installed: Sequence[Route], undo: list[Callable[[], object]],
                t: _Stopwatch, pending_gateway: Future[object] | None) -> bytes:
        """Gateway and local flows, then the result. `routes` as the result shows them,
        `installed` as they are in the container."""
        # The network's remote endpoints are read before the local flows go in, so that the
        # container's rules and the rules to reach the rest of its network land in one bundle.
        self.networks.join(conf.name)
        t.lap("join")
        key = endpoint_key(conf.name, env.container_id, env.ifname)
        if pending_gateway is not None:
            pending_gateway.result()  # its failure is this ADD's failure
            t.lap("gateway (rest)")
        ips = tuple(str(a.address.ip) for a in assigned)
        if not leases.is_dhcp(conf):  # dhcp: registered before the lease, to run after its DEL
            undo.append(lambda: self.dataplane.remove_endpoint(key))
        self.dataplane.install_endpoint(key, LocalPort(conf.vni, link.mac, ips, ofport,
                                                       leases.is_dhcp(conf),
                                                       is_dhcp_server(conf, assigned)))
        t.lap("flows")
        result = build_result(conf.cni_version, Attachment(
            host_ifname=link.host_ifname, host_mac=link.host_mac, ifname=env.ifname,
            mac=link.mac, netns=env.netns, addresses=assigned, routes=routes,
            mtu=self.mtu(conf)), conf.prev_result, conf.dns)
        log.info("ADD %s %s -> %s %s port %s (%s)", conf.name, owner, ",".join(ips), link.mac,
                 ofport, t)
        return encode(result)

    # --- DEL ----------------------------------------------------------------------------------

    def delete(self, env: CniEnv, conf: NetConf) -> bytes:
        t = _Stopwatch()
        with self.lock(owner_of(env.container_id, env.ifname)):
            self.teardown(env, conf, env.container_id, env.ifname, t)
        log.info("DEL %s %s/%s (%s)", conf.name, env.container_id, env.ifname, t)
        return b""

    def teardown(self, env: CniEnv, conf: NetConf, container_id: str, ifname: str,
                 t: _Stopwatch | None = None) -> None:
        """Remove one attachment of `conf`'s network, whatever of it is left. Idempotent.

        The host-side veth and port are named after container and interface only, so they are
        removed only if the port says it belongs to this network (or no port is left): a DEL
        for another network, sent after its ADD was refused, must not cut this one.
        """
        t = t or _Stopwatch()
        if not conf.ipam.delegated:
            self._detach(conf.name, container_id, ifname, t)
            self.ipam.release(conf.name, owner_of(container_id, ifname))
            t.lap("ipam")
            return
        # The delegate first, as `bridge` does: dhcp's daemon releases the lease with a
        # DHCPRELEASE sent from the container's link, which must still be there, flows included.
        try:
            delegate.run("DEL", conf, env, container_id=container_id, ifname=ifname)
            t.lap("ipam")
        finally:  # a delegate that fails does not keep the rest attached; DEL can be retried
            self._detach(conf.name, container_id, ifname, t)

    def teardown_orphan(self, network: str, container_id: str, ifname: str) -> None:
        """Like teardown, for an attachment whose netconf we do not have (the janitor's case):
        built-in allocations are freed; a delegated IPAM's lease is left to GC or DEL."""
        self._detach(network, container_id, ifname)
        self.ipam.release(network, owner_of(container_id, ifname))

    def _detach(self, network: str, container_id: str, ifname: str,
                t: _Stopwatch | None = None) -> None:
        """Flows, port and veth (if the port is this network's, or gone), endpoint record.

        The network's last container here takes the gateway along (an OVS port, routes, a rule,
        iptables rules: tens of ms), on another thread beside the rest, which does not depend
        on it. Every part is tried even if another fails; the first failure is DEL's."""
        t = t or _Stopwatch()
        host_if = veth.hostside_name(container_id, ifname)
        key = endpoint_key(network, container_id, ifname)
        self.dataplane.remove_endpoint(key)
        t.lap("flows")
        gateway = self._background.submit(self.gateways.release, key)
        try:
            if portschema.network(self.ovs.port_external_ids(host_if)) in (None, network):
                self.ovs.delete_port(host_if)
                t.lap("ovs-port")
                veth.delete_host_link(host_if)
                t.lap("veth")
            # Only if it names this host: a DEL here for a container ID attached on another
            # host (after its ADD here was refused) must leave that host's record alone.
            self.store.delete_endpoint(network, container_id, ifname, host=self.host.name)
            t.lap("endpoint")
        finally:
            futures.wait([gateway])
            t.lap("gateway (rest)")
        gateway.result()

    # --- CHECK --------------------------------------------------------------------------------

    def check(self, env: CniEnv, conf: NetConf) -> bytes:
        if not conf.at_least("0.4.0"):
            raise CniError(Code.INCOMPATIBLE_CNI_VERSION,
                           f"CHECK needs cniVersion 0.4.0 or later, the netconf says "
                           f"{conf.cni_version}")
        self.check_bridge(conf)
        with self.lock(owner_of(env.container_id, env.ifname)):
            rec = self.store.get_endpoint(conf.name, env.container_id, env.ifname)
            if rec is None:
                raise CniError(Code.UNKNOWN_CONTAINER,
                               f"container {env.container_id} interface {env.ifname} is not "
                               f"attached to {conf.name}")
            problems = checks.differences(
                env, conf, rec, endpoint_key(conf.name, env.container_id, env.ifname),
                ovs=self.ovs, bridge=self.host.bridge, dataplane=self.dataplane,
                gateways=self.gateways, gateway=self.gateway_spec(conf), ipam=self.ipam)
            if conf.ipam.delegated:
                delegate.run("CHECK", conf, env)
        if problems:
            raise CniError(Code.CHECK_FAILED,
                           f"container {env.container_id} interface {env.ifname} on "
                           f"{conf.name}: " + "; ".join(problems))
        return b""
