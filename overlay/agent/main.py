"""overlay-agent: the one place where the pieces are built and wired together.

Start-up order matters: OVS first (it may carry the underlay IP, which etcd traffic needs in
netdev mode), then the local endpoints recovered from OVSDB so their flows are right before
anything else happens, then etcd (host registration, watch), then the gRPC socket. A graceful
stop leaves the host lease to expire on its own: a restarting agent must not make the other
hosts drop their tunnels to it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from overlay import __version__
from overlay.agent import config as agent_config
from overlay.agent import logs, memory, observe, peers
from overlay.agent.doctor import HostDoctor
from overlay.agent.janitor import Janitor
from overlay.agent.metrics import Metrics
from overlay.agent.metrics_server import Readiness
from overlay.agent.networks import NetworkWatches
from overlay.agent.node import Node, prepare
from overlay.agent.reconciler import Reconciler
from overlay.cni import service as svc
from overlay.cni.leases import DHCP
from overlay.cni.ports import KernelLinks
from overlay.cni.server import CniServicer, serve
from overlay.cni.subnets import SubnetGuard
from overlay.cni.v1 import cni_pb2
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError
from overlay.gateway.manager import GatewayManager
from overlay.ipam.allocator import EtcdIpam
from overlay.model import endpoint_key
from overlay.netlink import underlay
from overlay.netlink.hostnets import read_host_networks
from overlay.ovs import portschema
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


def main(argv: list[str] | None = None) -> int:
    cfg, check_only = agent_config.load_with_options(argv)
    if check_only:
        return check_config(cfg)
    logs.configure(cfg.log_level, cfg.log_format)
    log.info("overlay-agent %s starting (%.2f s after the process started: interpreter and "
             "imports)", __version__, since_process_start())
    try:  # before OVS is touched: certificate files, then a handshake if etcd answers already
        etcd_tls.check_before_start(cfg.etcd_tls, cfg.etcd_endpoints, cfg.etcd_timeout)
    except etcd_tls.TlsError as err:
        log.error("refusing to start: %s", err)
        return 1
    # Metrics and probes from the start: /healthz answers while OVS and etcd are awaited.
    metrics, readiness = Metrics(), Readiness()
    try:
        metrics_server = observe.start_server(cfg.metrics_address, metrics, readiness)
    except OSError as err:
        log.error("cannot serve metrics on %s: %s", cfg.metrics_address, err)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # The switch of reference is taken before the agent first programs it (br-phy's address,
    # gateway ports, the table): a restart of ovs-vswitchd during start-up is then handled as
    # soon as the watcher starts (below). The bridge exists from an earlier run, or after
    # prepare() on a host's first start.
    switch_watch = SwitchRestartWatcher(rundir=cfg.rundir, bridge=cfg.bridge,
                                        on_restart=lambda: after_switch_restart())
    switch_watch.reference()
    try:
        ovs = Ovsdb(endpoint=cfg.ovsdb)
        node: Node = prepare(cfg, ovs)
    except CniError as err:
        log.error("cannot prepare OVS: %s", err)
        return 1
    switch_watch.reference()
    try:
        generation = ovs.next_generation(cfg.bridge)
        restored = local_endpoints(ovs, cfg.bridge)
        agent_id = ovs.agent_id()
    except CniError as err:
        log.error("cannot read the ports of %s: %s", cfg.bridge, err)
        return 1
    dataplane = Dataplane(ofctl=Ofctl(rundir=cfg.rundir), bridge=cfg.bridge,
                          tunnel_ofport=node.tunnel_ofport, held=True, generation=generation,
                          on_bundle=metrics.flow_bundle,
                          channel=Channel(rundir=cfg.rundir, bridge=cfg.bridge))
    dataplane.load_local(restored)
    # Gateways of networks with local endpoints come back (flows held with the rest); those
    # whose last container went while no agent ran are removed.
    gateways = GatewayManager(ovs=ovs, dataplane=dataplane, bridge=cfg.bridge)
    gateways.restore(dataplane.local_vnis())
    log.info("flow generation %d; found %d local endpoints in OVSDB; flows untouched until etcd "
             "is read", generation, len(restored))

    try:  # etcd unreachable: keep trying; etcd refusing our TLS: give up (etcd_tls.TlsRejected)
        store = Store(endpoints=list(cfg.etcd_endpoints), timeout=cfg.etcd_timeout,
                      ca=cfg.etcd_ca, cert=cfg.etcd_cert, key=cfg.etcd_key,
                      on_error=metrics.etcd_request_error)
        register_until_done(store, records.HostRecord(cfg.host, node.vtep, node.datapath,
                                                      agent_id), cfg.lease_ttl, stop)
    except (etcd_tls.TlsError, HostNameTaken) as err:
        log.error("refusing to start: %s", err)
        if metrics_server is not None:
            metrics_server.stop()
        ovs.close()
        return 1
    # Userspace tunneling drops the first packet to a VTEP whose MAC it has not learnt yet.
    prime = underlay.prime_neighbors if node.datapath == "netdev" else (lambda vteps: None)
    # Not while the first snapshot is being built into the table: a restarted agent learns
    # every host at once, and priming 1,000 VTEPs (an ARP request each, through the userspace
    # datapath, again at 0.3, 1 and 2.5 s) took CPU from building and installing the 50,000
    # endpoints' rules. ovs-vswitchd kept its neighbour cache while the agent was away; all
    # hosts are primed once the table is in (below), and every RESYNC_INTERVAL anyway.
    table_in = threading.Event()

    def prime_new(vteps: set[str]) -> None:
        if node.datapath == "netdev" and table_in.is_set():
            underlay.prime_neighbors_soon(vteps)
    # Peers' VTEPs from host records, kept across restarts (agent/peers.py).
    peers_file = os.path.join(os.path.dirname(cfg.socket), "peer-vteps.json")
    reconciler = Reconciler(host=cfg.host, dataplane=dataplane, on_new_vteps=prime_new,
                            host_grace=cfg.host_grace, remembered_vteps=peers.load(peers_file),
                            on_reject=metrics.record_rejected, on_conflict=metrics.record_conflict)
    watch_metrics = observe.WatchMetrics(metrics)
    # Network records (each network's VNI and subnet) first: endpoints are checked against them.
    network_records = PrefixWatch(store=store, prefix=records.NETWORKS,
                                  on_changes=reconciler.on_networks, observer=watch_metrics)
    network_records.start()

    def on_hosts(changes: list[Change]) -> None:
        reconciler.on_hosts(changes)
        for change in changes:  # ours changed by someone else: put back at once (store/etcd.py)
            store.host_changed(change.key, change.value)
    hosts = PrefixWatch(store=store, prefix=records.HOSTS, on_changes=on_hosts,
                        observer=watch_metrics)
    networks = NetworkWatches(store=store, reconciler=reconciler,
                              local_networks=lambda: local_networks(dataplane),
                              observer=watch_metrics)
    hosts.start()
    networks.sweep()  # one watch per network with a local endpoint recovered from OVSDB
    while not stop.is_set() and not (network_records.wait_synced(1.0) and hosts.wait_synced(1.0)
                                     and networks.wait_synced(1.0)):
        log.info("waiting for the first snapshot of etcd")
    dataplane.release()  # one atomic replacement (or the table found in place), all together
    try:
        ovs.record_verified(cfg.bridge, generation)
    except CniError as err:
        log.warning("could not record the verified flow generation: %s", err)
    log.info("flows installed: %d local and %d remote endpoints, %d rules",
             *dataplane.counts())
    table_in.set()
    peers.save(peers_file, reconciler.known_vteps())
    prime_new(reconciler.vteps)

    host = svc.HostInfo(cfg.host, cfg.bridge, node.underlay_mtu, node.vtep)
    ipam, links = EtcdIpam(store=store, host=cfg.host), KernelLinks()
    service = svc.CniService(
        host=host, endpoints=store, network_records=store, ports=ovs, flows=dataplane,
        allocator=ipam, links=links, networks=networks, gateways=gateways,
        subnets=SubnetGuard(read_host=read_host_networks,
                            vteps=lambda: {**reconciler.host_vteps(), cfg.host: node.vtep},
                            etcd_endpoints=cfg.etcd_endpoints))
    janitor = Janitor(host=host, ports=ovs, endpoints=store, links=links,
                      detacher=service.detacher)
    observe.watch_agent(metrics, readiness, dataplane=dataplane, ovs=ovs, store=store,
                        bridge=cfg.bridge,
                        etcd_synced=lambda: hosts.wait_synced(0) and networks.wait_synced(0))
    # Containers that vanished while no agent was watching, before serving (a runtime's first
    # calls must not meet their leftovers). This host's records in the networks it follows
    # came with their watches' snapshots; only the other networks' records are read here.
    followed = set(networks.watches())
    try:
        own = reconciler.own_records() + [rec for rec in store.endpoints_outside(followed)
                                          if rec.host == cfg.host]
    except CniError as err:
        log.warning("janitor could not read etcd: %s", err)
    else:
        run_janitor(janitor, metrics, own)
    memory.release_free_memory()  # what building the first table allocated (agent/memory.py)

    def info() -> cni_pb2.AgentInfoReply:
        local, remote, flows = dataplane.counts()
        try:
            store.ping()
            etcd_ok = True
        except CniError:
            etcd_ok = False
        return cni_pb2.AgentInfoReply(
            host=cfg.host, vtep=node.vtep, datapath=node.datapath, bridge=cfg.bridge,
            ovs_connected=ovs.connected(), etcd_connected=etcd_ok,
            local_endpoints=local, remote_endpoints=remote, flows=flows, version=__version__)

    server = serve(socket_path=cfg.socket, servicer=CniServicer(
        service=service, info=info, on_request=metrics.cni_request,
        doctor=HostDoctor(host=host, ports=ovs, endpoints=store, flows=dataplane,
                          allocator=ipam, links=links, gateways=gateways).problems,
        problems=reconciler.problems))

    def after_switch_restart() -> None:
        again = prepare(cfg, ovs, known=node)  # netdev: br-phy's address is back
        dataplane.set_tunnel_ofport(again.tunnel_ofport)
        dataplane.reload_local(local_endpoints(ovs, cfg.bridge))
        gateways.restore(dataplane.local_vnis())  # the ports' addresses and routes are gone
        prime(reconciler.vteps)
        metrics.ovs_restart()
    switch_watch.start()
    log.info("serving CNI on %s (host %s, vtep %s, datapath %s), %.2f s after the process "
             "started", cfg.socket, cfg.host, node.vtep, node.datapath, since_process_start())

    rounds = 0
    while not stop.wait(RESYNC_INTERVAL):
        rounds += 1
        peers.save(peers_file, reconciler.known_vteps())
        try:
            prime(reconciler.vteps)
            networks.sweep()
            dataplane.verify()  # a count of the switch's rules; the whole table only on drift
            gateways.repair()   # iptables rules, routes or addresses removed behind our back
        except CniError as err:
            log.warning("periodic flow check failed: %s", err)
        if rounds % JANITOR_EVERY == 0:
            run_janitor(janitor, metrics, reconciler.own_records())

    log.info("stopping")
    switch_watch.stop()
    server.stop(grace=5).wait()
    networks.stop_all()
    hosts.stop()
    network_records.stop()
    peers.save(peers_file, reconciler.known_vteps())
    store.close()
    ovs.close()
    if metrics_server is not None:
        metrics_server.stop()
    time.sleep(0)  # let daemon threads observe the stop before interpreter shutdown
    return 0


def check_config(cfg: agent_config.AgentConfig) -> int:
    """--check-config: the configuration parsed and its values are sane (load_with_options
    exited 1 otherwise); the TLS files are readable and match the endpoints. Nothing starts."""
    try:
        etcd_tls.check_files(cfg.etcd_tls)
        etcd_tls.check_endpoints(cfg.etcd_tls, cfg.etcd_endpoints)
    except etcd_tls.TlsError as err:
        print(f"overlay-agent: invalid configuration: {err}", file=sys.stderr)
        return 1
    print(f"configuration OK: host {cfg.host}, etcd {','.join(cfg.etcd_endpoints)}, "
          f"ovsdb {cfg.ovsdb}, socket {cfg.socket}, metrics "
          f"{cfg.metrics_address or 'off'}, log format {cfg.log_format}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
