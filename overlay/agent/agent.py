"""The overlay agent as a component: build() wires it, start() runs the start-up phases,
run() keeps the host in step until asked to stop, stop() closes what start() opened.

Start-up order matters: OVS first (it may carry the underlay IP, which etcd traffic needs in
netdev mode), then the local endpoints recovered from OVSDB so their flows are right before
anything else happens, then etcd (host registration, watch), then the gRPC socket. A graceful
stop leaves the host lease to expire on its own: a restarting agent must not make the other
hosts drop their tunnels to it.

build() wires what exists before anything outside the process is touched (configuration,
metrics, readiness, the stop event). The other parts need what an earlier phase found (the
node and the flow generation come from OVS, the dataplane needs both), so each phase builds
its own, keyword arguments only, and nothing lives at module level. Every part that holds a
thread, a socket or a connection registers how to close it as soon as it exists: stop()
closes them latest first, once, whatever phase start() reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from overlay import __version__
from overlay.agent import encryption, memory, observe, peers, policies, rejects, startup
from overlay.agent.config import AgentConfig
from overlay.agent.doctor import HostDoctor
from overlay.agent.encryption import Encryption
from overlay.agent.janitor import Janitor
from overlay.agent.metrics import Metrics
from overlay.agent.metrics_server import Readiness
from overlay.agent.networks import NetworkWatches
from overlay.agent.node import Node, prepare
from overlay.agent.reconciler import Reconciler
from overlay.cni import service as svc
from overlay.cni.ports import KernelLinks
from overlay.cni.server import CniServicer, serve
from overlay.cni.subnets import SubnetGuard
from overlay.cni.v1 import cni_pb2
from overlay.dataplane.dataplane import Dataplane
from overlay.errors import CniError
from overlay.gateway.manager import GatewayManager
from overlay.ipam.allocator import EtcdIpam
from overlay.netlink import underlay
from overlay.netlink.hostnets import HostNetworksCache
from overlay.ovs.liveness import SwitchRestartWatcher
from overlay.ovs.ofctl import Ofctl
from overlay.ovs.openflow import Channel
from overlay.ovs.ovsdb import Ovsdb
from overlay.store import records
from overlay.store import tls as etcd_tls
from overlay.store.etcd import Store
from overlay.store.ownership import HostNameTaken
from overlay.store.stream import Change
from overlay.store.watch import PrefixWatch

log = logging.getLogger("overlay.agent")

RESYNC_INTERVAL = 15.0
JANITOR_EVERY = 4  # resync rounds: once a minute


class StartError(Exception):
    """Start-up cannot go on. The message is the whole log line (the agent exits with 1)."""


class Agent:
    """One host's agent. start() raises StartError; stop() is safe after any phase, and twice.

    The parts below are set by the phase that builds them (see start() for the order)."""

    _ovs: Ovsdb
    _node: Node
    _dataplane: Dataplane
    _gateways: GatewayManager
    _host_record: records.HostRecord
    _store: Store
    _reconciler: Reconciler
    _network_records: PrefixWatch
    _hosts: PrefixWatch
    _networks: NetworkWatches
    _service: svc.CniService
    _janitor: Janitor
    _doctor: HostDoctor
    _switch_watch: SwitchRestartWatcher
    _encryption: Encryption

    def __init__(self, *, cfg: AgentConfig, metrics: Metrics, readiness: Readiness,
                 stop: threading.Event, resync_interval: float = RESYNC_INTERVAL) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._readiness = readiness
        self._stop = stop
        self._resync_interval = resync_interval
        self._generation = 0
        self._table_in = threading.Event()  # the first whole table is in the switch
        # Peers' VTEPs from host records, kept across restarts (agent/peers.py).
        self._peers_file = os.path.join(os.path.dirname(cfg.socket), "peer-vteps.json")
        self._peers_saved: dict[str, str] | None = None  # what the file holds, once written
        self._closing = contextlib.ExitStack()  # how to close each part, in start-up order
        self._started = False

    def start(self, *, handle_signals: bool = False) -> None:
        """The start-up phases, in the order of the module docstring. With `handle_signals`
        (the process's agent, on its main thread), SIGTERM and SIGINT call request_stop() once
        the probes answer: before that nothing is held, and the default action (exit) is
        right; after, the start-up goes on and run() returns."""
        log.info("overlay-agent %s starting (%.2f s after the process started: interpreter "
                 "and imports)", __version__, startup.since_process_start())
        self._check_tls()
        self._serve_metrics()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.request_stop())
        # The switch of reference is taken before the agent first programs it (br-phy's
        # address, gateway ports, the table): a restart of ovs-vswitchd during start-up is then
        # handled as soon as the watcher starts (below). The bridge exists from an earlier run,
        # or after prepare() on a host's first start.
        self._switch_watch = self._new_switch_watcher()
        self._switch_watch.reference()
        self._prepare_ovs()
        self._switch_watch.reference()
        self._restore_local()
        self._register_host()
        self._follow_etcd()
        self._install_table()
        self._build_service()
        self._clean_leftovers()
        self._serve_cni()
        self._start_switch_watcher()
        self._started = True
        cfg = self._cfg
        log.info("serving CNI on %s (host %s, vtep %s, datapath %s), %.2f s after the process "
                 "started", cfg.socket, cfg.host, self._node.vtep, self._node.datapath,
                 startup.since_process_start())

    def request_stop(self) -> None:
        """Make run() return (and a start-up that waits for etcd go on): signal handlers."""
        self._stop.set()

    def run(self) -> None:
        """Until asked to stop: every resync interval, check the switch and the gateways
        against the model, and every JANITOR_EVERY rounds run the janitor."""
        rounds = 0
        while not self._stop.wait(self._resync_interval):
            rounds += 1
            self._save_peers()
            self._resync()
            if rounds % JANITOR_EVERY == 0:
                startup.run_janitor(self._janitor, self._metrics, self._reconciler.own_records())

    def stop(self) -> None:
        """Close what start() opened, latest first: the switch watch, the socket (calls in
        flight get 5 s), the watches, etcd, OVSDB, the metrics listener. Idempotent, from one
        thread (main() calls it; signal handlers only request_stop()). The host's lease is
        left to expire (module docstring)."""
        self._stop.set()
        if self._started:
            log.info("stopping")
            self._started = False
        self._closing.close()  # each callback runs once: a second stop() finds none
        time.sleep(0)  # let daemon threads observe the stop before interpreter shutdown

    # The start-up phases, in order.

    def _check_tls(self) -> None:
        try:  # before OVS is touched: certificate files, then a handshake if etcd answers already
            etcd_tls.check_before_start(self._cfg.etcd_tls, self._cfg.etcd_endpoints,
                                        self._cfg.etcd_timeout)
        except etcd_tls.TlsError as err:
            raise StartError(f"refusing to start: {err}") from None

    def _serve_metrics(self) -> None:
        # Metrics and probes from the start: /healthz answers while OVS and etcd are awaited.
        address = self._cfg.metrics_address
        try:
            server = observe.start_server(address, self._metrics, self._readiness)
        except OSError as err:
            raise StartError(f"cannot serve metrics on {address}: {err}") from None
        if server is not None:
            self._closing.callback(server.stop)

    def _prepare_ovs(self) -> None:
        try:
            self._ovs = Ovsdb(endpoint=self._cfg.ovsdb)
            self._closing.callback(self._ovs.close)
            self._node = prepare(self._cfg, self._ovs)
        except CniError as err:
            raise StartError(f"cannot prepare OVS: {err}") from None
        # WireGuard (agent/encryption.py), before the host record publishes its key.
        self._encryption = encryption.start(self._cfg, self._node, self._metrics)

    def _restore_local(self) -> None:
        cfg, ovs = self._cfg, self._ovs
        try:
            self._generation = ovs.next_generation(cfg.bridge)
            restored = startup.local_endpoints(ovs, cfg.bridge)
            agent_id = ovs.agent_id()
        except CniError as err:
            raise StartError(f"cannot read the ports of {cfg.bridge}: {err}") from None
        self._host_record = self._encryption.host_record(records.HostRecord(
            cfg.host, self._node.vtep, self._node.datapath, agent_id))
        self._dataplane = Dataplane(
            ofctl=Ofctl(rundir=cfg.rundir), bridge=cfg.bridge,
            tunnel_ofport=self._node.tunnel_ofport, held=True, generation=self._generation,
            on_bundle=self._metrics.flow_bundle,
            channel=Channel(rundir=cfg.rundir, bridge=cfg.bridge, meters=rejects.METERS))
        self._dataplane.load_local(restored)
        # Gateways come back for networks with local endpoints, and go for those left without.
        self._gateways = GatewayManager(ovs=ovs, dataplane=self._dataplane, bridge=cfg.bridge)
        self._closing.callback(self._gateways.close)
        self._gateways.restore(self._dataplane.local_vnis())
        log.info("flow generation %d; found %d local endpoints in OVSDB; flows untouched until "
                 "etcd is read", self._generation, len(restored))

    def _register_host(self) -> None:
        cfg = self._cfg
        try:  # etcd unreachable: keep trying; etcd refusing our TLS: give up (etcd_tls.TlsRejected)
            self._store = Store(endpoints=list(cfg.etcd_endpoints), timeout=cfg.etcd_timeout,
                                ca=cfg.etcd_ca, cert=cfg.etcd_cert, key=cfg.etcd_key,
                                on_error=self._metrics.etcd_request_error)
            self._closing.callback(self._store.close)
            startup.register_until_done(self._store, self._host_record, cfg.lease_ttl, self._stop)
        except (etcd_tls.TlsError, HostNameTaken) as err:
            raise StartError(f"refusing to start: {err}") from None

    def _follow_etcd(self) -> None:
        """The host watch, one endpoint watch per network with a local endpoint, and their
        first snapshots (flows stay held meanwhile)."""
        store = self._store
        self._reconciler = Reconciler(
            host=self._cfg.host, dataplane=self._dataplane, on_new_vteps=self._prime_new,
            host_grace=self._cfg.host_grace, remembered_vteps=peers.load(self._peers_file),
            on_reject=self._metrics.record_rejected, on_conflict=self._metrics.record_conflict,
            sealed=self._encryption.sealed,
            encrypted_networks=startup.encrypted_networks(self._ovs, self._cfg.bridge))
        self._encryption.set_on_peer_changed(self._reconciler.peer_changed)
        self._closing.callback(self._save_peers)  # once the watches are stopped
        watch_metrics = observe.WatchMetrics(self._metrics)
        # Network records (each network's VNI and subnet) first: endpoints are checked against them.
        self._network_records = PrefixWatch(store=store, prefix=records.NETWORKS,
                                            on_changes=self._reconciler.on_networks, observer=watch_metrics)
        self._network_records.start()
        self._closing.callback(self._network_records.stop)
        self._policies = policies.follow(store, self._dataplane, self._metrics.record_rejected, watch_metrics)
        self._closing.callback(self._policies.stop)

        def on_hosts(changes: list[Change]) -> None:
            self._reconciler.on_hosts(changes)
            self._encryption.on_hosts(changes)  # after: a new peer's VTEP is known
            for change in changes:  # ours changed by someone else: put back at once (store/etcd.py)
                store.host_changed(change.key, change.value)
        self._hosts = PrefixWatch(store=store, prefix=records.HOSTS, on_changes=on_hosts,
                                  observer=watch_metrics)
        self._networks = NetworkWatches(
            store=store, reconciler=self._reconciler,
            local_networks=lambda: startup.local_networks(self._dataplane), observer=watch_metrics)
        self._hosts.start()
        self._closing.callback(self._hosts.stop)
        self._closing.callback(self._networks.stop_all)
        self._networks.sweep()  # one watch per network with a local endpoint recovered from OVSDB
        while not self._stop.is_set() and not self._etcd_synced(1.0):
            log.info("waiting for the first snapshot of etcd")

    def _install_table(self) -> None:
        dataplane = self._dataplane
        dataplane.release()  # one atomic replacement (or the table found in place), all together
        try:
            self._ovs.record_verified(self._cfg.bridge, self._generation)
        except CniError as err:
            log.warning("could not record the verified flow generation: %s", err)
        log.info("flows installed: %d local and %d remote endpoints, %d rules", *dataplane.counts())
        self._table_in.set()
        self._closing.callback(rejects.start(cfg=self._cfg, registry=self._metrics.registry))
        self._save_peers()
        self._prime_new(self._reconciler.vteps)

    def _build_service(self) -> None:
        cfg, node, store, reconciler = self._cfg, self._node, self._store, self._reconciler
        host = svc.HostInfo(cfg.host, cfg.bridge, node.underlay_mtu, node.vtep,
                            self._encryption.unavailable, cfg.encrypt_networks)
        ipam, links = EtcdIpam(store=store, host=cfg.host), KernelLinks()
        self._service = svc.CniService(
            host=host, endpoints=store, network_records=store, ports=self._ovs,
            flows=self._dataplane, allocator=ipam, links=links, networks=self._networks,
            gateways=self._gateways, subnets=SubnetGuard(
                read_host=HostNetworksCache(), etcd_endpoints=cfg.etcd_endpoints,
                vteps=lambda: {**reconciler.host_vteps(), cfg.host: node.vtep}))
        self._janitor = Janitor(host=host, ports=self._ovs, endpoints=store, links=links,
                                detacher=self._service.detacher)
        self._doctor = HostDoctor(host=host, ports=self._ovs, endpoints=store, flows=self._dataplane,
                                  allocator=ipam, links=links, gateways=self._gateways)
        self._closing.callback(self._service.close)  # its pool, after the gRPC server's stop
        self._closing.callback(observe.watch_agent(  # stopped: the policy counters' reader
            self._metrics, self._readiness, dataplane=self._dataplane, ovs=self._ovs,
            store=store, bridge=cfg.bridge,
            etcd_synced=lambda: self._hosts.wait_synced(0) and self._networks.wait_synced(0)).stop)

    def _clean_leftovers(self) -> None:
        # Containers that vanished while no agent was watching, before serving (a runtime's first
        # calls must not meet their leftovers). This host's records in the networks it follows
        # came with their watches' snapshots; only the other networks' records are read here.
        followed = set(self._networks.watches())
        try:
            own = self._reconciler.own_records() + [
                rec for rec in self._store.endpoints_outside(followed)
                if rec.host == self._cfg.host]
        except CniError as err:
            log.warning("janitor could not read etcd: %s", err)
        else:
            startup.run_janitor(self._janitor, self._metrics, own)
        memory.release_free_memory()  # what building the first table allocated (agent/memory.py)

    def _serve_cni(self) -> None:
        server = serve(socket_path=self._cfg.socket, servicer=CniServicer(
            service=self._service, info=self._info, on_request=self._metrics.cni_request,
            doctor=self._doctor.problems,
            problems=lambda: self._reconciler.problems() + self._encryption.problems()))
        self._closing.callback(lambda: server.stop(grace=5).wait())
        self._closing.callback(encryption.follow_rotations(
            store=self._store, encryption=self._encryption, record=self._host_record))
        if self._cfg.docker_plugin_socket:  # Docker's driver: the same service (docs/docker.md)
            from overlay.docker import plugin
            self._closing.callback(plugin.from_config(self._cfg, self._service, self._store).stop)

    def _new_switch_watcher(self) -> SwitchRestartWatcher:
        return SwitchRestartWatcher(rundir=self._cfg.rundir, bridge=self._cfg.bridge,
                                    on_restart=self._after_switch_restart)

    def _start_switch_watcher(self) -> None:
        self._switch_watch.start()
        self._closing.callback(self._switch_watch.stop)

    # What the phases and the loop call.

    def _etcd_synced(self, timeout: float) -> bool:
        return (self._network_records.wait_synced(timeout) and self._hosts.wait_synced(timeout)
                and self._networks.wait_synced(timeout) and self._policies.wait_synced(timeout))

    def _save_peers(self) -> None:
        """Every resync round calls this: the file is written only when the VTEPs changed."""
        vteps = self._reconciler.known_vteps()
        if vteps != self._peers_saved:
            peers.save(self._peers_file, vteps)
            self._peers_saved = vteps

    def _prime(self, vteps: set[str]) -> None:
        # Userspace tunneling drops the first packet to a VTEP whose MAC it has not learnt yet.
        if self._node.datapath == "netdev":
            underlay.prime_neighbors(vteps)

    def _prime_new(self, vteps: set[str]) -> None:
        # Not while the first snapshot is being built into the table: a restarted agent learns
        # every host at once, and priming 1,000 VTEPs (an ARP request each, through the
        # userspace datapath, again at 0.3, 1 and 2.5 s) took CPU from building and installing
        # the 50,000 endpoints' rules. ovs-vswitchd kept its neighbour cache while the agent
        # was away; all hosts are primed once the table is in (_install_table), and every
        # resync interval anyway.
        if self._node.datapath == "netdev" and self._table_in.is_set():
            underlay.prime_neighbors_soon(vteps)

    def _resync(self) -> None:
        try:
            self._prime(self._reconciler.vteps)
            self._networks.sweep()
            self._dataplane.verify()  # the switch's rules against ours; the whole table only on drift
            self._gateways.repair()   # iptables rules, routes or addresses removed behind our back
            self._encryption.resync(set(self._reconciler.host_vteps()))
        except CniError as err:
            log.warning("periodic flow check failed: %s", err)

    def _after_switch_restart(self) -> None:
        again = prepare(self._cfg, self._ovs, known=self._node)  # netdev: br-phy's address is back
        self._dataplane.set_tunnel_ofport(again.tunnel_ofport)
        self._dataplane.reload_local(startup.local_endpoints(self._ovs, self._cfg.bridge))
        # The ports' addresses and routes are gone.
        self._gateways.restore(self._dataplane.local_vnis())
        self._prime(self._reconciler.vteps)
        self._metrics.ovs_restart()

    def _info(self) -> cni_pb2.AgentInfoReply:
        local, remote, flows = self._dataplane.counts()
        try:
            self._store.ping()
            etcd_ok = True
        except CniError:
            etcd_ok = False
        cfg, node = self._cfg, self._node
        return cni_pb2.AgentInfoReply(
            host=cfg.host, vtep=node.vtep, datapath=node.datapath, bridge=cfg.bridge,
            ovs_connected=self._ovs.connected(), etcd_connected=etcd_ok,
            local_endpoints=local, remote_endpoints=remote, flows=flows, version=__version__)


def build(cfg: AgentConfig) -> Agent:
    """The agent for `cfg`, wired and not started: nothing outside the process is touched."""
    return Agent(cfg=cfg, metrics=Metrics(), readiness=Readiness(), stop=threading.Event())
