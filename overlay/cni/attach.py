"""ADD: the steps of attaching a container, in order, each undone on failure.

validate -> record the network (etcd) -> addresses (etcd transactions) -> veth into the netns
-> port on br-int (with an ofport asked for) -> endpoint record (etcd) -> local flows (with that
ofport, while OVS attaches the port; then the port is awaited); the
network's gateway on this host (overlay/gateway/, the first container of a network creates it)
is made on another thread beside these steps, and the flows wait for it. With a delegated IPAM
plugin the link comes first, as in the reference `bridge` plugin: veth (up, no address) ->
[dhcp: port, record without address, DHCP-only flows] -> the plugin -> addresses and routes on
the link -> port, record, flows (see _add_link_first, leases.py).

Each step's undo is registered *before* the step runs (every undo is idempotent), so a step
that fails half-way is undone too: a failed ADD leaves no veth, no OVS port, no IP allocation
(or lease), no endpoint record, no flows and no gateway reference behind.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future

from overlay.cni import delegate, labels, leases, pods, requests, steps
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.ports import (
    Allocator,
    EndpointStore,
    Flows,
    Gateways,
    HostInfo,
    Links,
    NetworkInterest,
    NetworkStore,
    PortStore,
    SubnetCheck,
)
from overlay.cni.result import Attachment, build_result, encode
from overlay.cni.steps import Stopwatch, StripedLock, Undo, is_dhcp_server, log
from overlay.dataplane.flows import LocalPort
from overlay.errors import CniError, Code
from overlay.ipam.allocator import Assigned
from overlay.model import Route, endpoint_key, mac_for
from overlay.netlink import veth
from overlay.ovs import portschema
from overlay.store.records import EndpointRecord, NetworkRecord, owner_of


class Attacher:
    def __init__(self, *, host: HostInfo, endpoints: EndpointStore, network_records: NetworkStore,
                 ports: PortStore, flows: Flows, allocator: Allocator, gateways: Gateways,
                 links: Links, networks: NetworkInterest, subnets: SubnetCheck,
                 lock: StripedLock, background: futures.Executor) -> None:
        self.host = host
        self.endpoints = endpoints
        self.network_records = network_records
        self.ports = ports
        self.flows = flows
        self.allocator = allocator
        self.gateways = gateways
        self.links = links
        self.networks = networks
        self.subnets = subnets
        self.lock = lock
        # Steps of an ADD that run beside its others (_beside): the CniService's pool.
        self._background = background

    def add(self, env: CniEnv, conf: NetConf) -> bytes:
        steps.check_bridge(conf, self.host)
        labels.endpoint_labels(conf, env)  # bad labels: refused before anything is created
        pods.pod_of(env)  # a bad pod name in CNI_ARGS: refused before anything is created
        steps.check_encryption(conf, self.host)
        owner = owner_of(env.container_id, env.ifname)
        with self.lock(owner):
            t = Stopwatch()
            # The two checks read (etcd; the host's routes), so they run side by side; an
            # attachment that exists already is the error reported first.
            record = self._background.submit(self.endpoints.get_endpoint, conf.name,
                                             env.container_id, env.ifname)
            try:
                # Before anything exists: a subnet that would break this host is refused (7).
                self.subnets.check(conf)
                bad_subnet = None
            except CniError as err:
                bad_subnet = err
            self._precheck(env, conf, record.result())
            if bad_subnet is not None:
                raise bad_subnet
            t.lap("precheck")
            undo: Undo = []
            try:
                return self._add_steps(env, conf, owner, undo, t)
            except BaseException:
                steps.roll_back(undo, owner)
                raise

    def _precheck(self, env: CniEnv, conf: NetConf, rec: EndpointRecord | None) -> None:
        """ALREADY_ATTACHED if the attachment exists here, or its record `rec` names another
        host (container IDs clash across hosts: say which, since DEL here will not touch it)."""
        what = f"container {env.container_id} interface {env.ifname}"
        if rec is not None and rec.host != self.host.name:
            raise CniError(Code.ALREADY_ATTACHED, f"{what} is already attached on host "
                           f"{rec.host}", "container IDs must be unique across the cluster; "
                           "DEL it there, or use another container ID")
        if rec is not None or self.links.link_exists(veth.hostside_name(env.container_id,
                                                                         env.ifname)):
            raise CniError(Code.ALREADY_ATTACHED, f"{what} is already attached",
                           "run DEL for it before ADD again")

    def _beside(self, undo: Undo, step: Callable[[], object],
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

    def _add_steps(self, env: CniEnv, conf: NetConf, owner: str, undo: Undo,
                   t: Stopwatch) -> bytes:
        mac = requests.requested_mac(conf, env)
        wanted_ips = requests.requested_ips(conf, env)
        key = endpoint_key(conf.name, env.container_id, env.ifname)
        gateway = steps.gateway_spec(conf, self.host)
        # Steps that wait on another process (etcd, ovsdb-server, the kernel) and that no
        # step before their join depends on run beside the others (see _beside): on a loaded
        # 2-core host the serial sum was most of an ADD.
        pending_gateway: Future[object] | None = None
        # The container's OpenFlow port number, chosen before a new gateway's OVSDB
        # transaction makes the IDL thread busy (choosing it takes that thread's lock).
        # (A delegated IPAM's ADD does not use it: the number is simply never asked for.)
        requested = self.ports.request_ofport()
        if gateway is not None:
            # The network's first container here creates the gateway (an OVS port, addresses,
            # routes, iptables rules: tens of ms); only the flows need it.
            pending_gateway = self._beside(undo, lambda: self.gateways.acquire(key, gateway),
                                           lambda _: self.gateways.release(key))
        network = NetworkRecord(conf.name, conf.vni, conf.subnets_text,
                                steps.encrypted(conf, self.host))

        def drop_if_created(created: object) -> None:  # another ADD's network stays
            if created:
                self.network_records.drop_network_if_unused(network)
        # Recording the network (one etcd transaction) goes beside the allocation; it must
        # have succeeded before anything is created on the host.
        pending_network = self._beside(
            undo, lambda: self.network_records.ensure_network(network), drop_if_created)
        if conf.ipam.delegated:
            pending_network.result()
            t.lap("network")
            return self._add_link_first(env, conf, owner, undo, t, mac, pending_gateway)

        undo.append(lambda: self.allocator.release(conf.name, owner))
        assigned = self.allocator.allocate(conf.name, owner, conf.ipam, wanted_ips)
        routes = conf.ipam.routes
        t.lap("ipam")
        pending_network.result()
        t.lap("network (rest)")
        if gateway is not None and not conf.ipam.routes_given:
            # README: a default route via the gateway unless the netconf lists its own routes.
            routes = (Route(ipaddress.IPv4Network("0.0.0.0/0"), gateway.address.ip), *routes)
        mac = mac or mac_for(assigned[0].address.ip)
        # The endpoint record (one etcd put) needs only what is known now: it is written
        # beside the veth, the port and the flows, and joined after the flows.
        host_if = veth.hostside_name(env.container_id, env.ifname)
        rec = self._record(env, conf, mac, host_if, assigned, routes)
        pending_record = self._beside(undo, lambda: self.endpoints.put_endpoint(rec),
                                      lambda _: self._unpublish(env, conf))
        link, ofport, pending_port = self._link_and_port(env, conf, undo, t, mac, assigned,
                                                         routes, requested)
        if link.mac != mac:  # the kernel kept another MAC (_link_and_port): record that one
            pending_record.result()
            self.endpoints.put_endpoint(self._record(env, conf, link.mac, host_if, assigned,
                                                     routes))
            t.lap("endpoint")
        return self._finish(env, conf, owner, link, ofport, assigned, routes, routes, undo, t,
                            pending_gateway, pending_port, pending_record)

    def _link_and_port(self, env: CniEnv, conf: NetConf, undo: Undo, t: Stopwatch,
                       mac: str, assigned: Sequence[Assigned], routes: Sequence[Route],
                       requested: int) -> tuple[veth.ContainerLink, int, Future[object] | None]:
        """The veth pair, configured, and the host end on the bridge.

        The OVS port is added as soon as the host end exists, while the container end is
        configured inside the netns. It asks for an OpenFlow port number chosen now
        (request_ofport), so that the flows can go in while ovs-vswitchd attaches the port
        (its reconfiguration was the longest wait of a serial ADD): the port is then returned
        still pending, with the number asked for (`requested`), and _finish joins it."""
        host_if = veth.hostside_name(env.container_id, env.ifname)
        port_mac = mac
        pending_port: list[Future[object]] = []
        undo.append(lambda: self.links.delete_host_link(host_if))
        link = self.links.create_container_link(
            container_id=env.container_id, netns=env.netns, ifname=env.ifname,
            mtu=steps.mtu(conf, self.host), addresses=[a.address for a in assigned],
            routes=routes, mac=mac,
            host_end_ready=lambda: pending_port.append(self._beside(
                undo, lambda: self._ensure_port(env, conf, host_if, port_mac, assigned,
                                                requested),
                lambda _: self.ports.delete_port(host_if))))
        t.lap("veth")
        if pending_port and link.mac == mac:
            return link, requested, pending_port[0]
        ofport = pending_port[0].result() if pending_port else None
        if not isinstance(ofport, int) or link.mac != mac:  # the kernel kept another MAC
            ofport = self._port(env, conf, link, assigned, undo)
        t.lap("ovs-port (rest)")
        return link, ofport, None

    def _add_link_first(self, env: CniEnv, conf: NetConf, owner: str, undo: Undo,
                        t: Stopwatch, mac: str | None,
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
        undo.append(lambda: self.links.delete_host_link(host_if))
        link = self.links.create_container_link(
            container_id=env.container_id, netns=env.netns, ifname=env.ifname,
            mtu=steps.mtu(conf, self.host), addresses=[], routes=[],
            mac=mac or leases.lease_mac(env.container_id, env.ifname))
        t.lap("veth")
        dhcp = leases.is_dhcp(conf)
        if dhcp:
            ofport = self._port(env, conf, link, [], undo)
            self._publish(env, conf, link, [], [], undo)
            key = endpoint_key(conf.name, env.container_id, env.ifname)
            self.networks.join(conf.name)
            undo.append(lambda: self.flows.remove_endpoint(key))
            self.flows.install_endpoint(key, LocalPort(conf.vni, link.mac, (), ofport, True))
            t.lap("pre-lease")
        # Registered after the link's undo, so a rollback releases the lease (dhcp: a DHCPRELEASE
        # sent from the link, through the flows) before the link and flows go.
        undo.append(lambda: delegate.run("DEL", conf, env))
        lease = delegate.parse_result(delegate.run("ADD", conf, env) or {})
        t.lap("ipam")
        routes = leases.chosen_routes(conf, lease.routes)
        installed = leases.installed_routes(routes, lease.assigned)
        self.links.add_container_addresses(netns=env.netns, ifname=env.ifname,
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

    def _port(self, env: CniEnv, conf: NetConf, link: veth.ContainerLink,
              assigned: Sequence[Assigned], undo: Undo | None) -> int:
        """The host end on the bridge (or its external_ids updated), with what names it.
        `undo` None: the port's removal is registered already."""
        if undo is not None:
            undo.append(lambda: self.ports.delete_port(link.host_ifname))
        return self._ensure_port(env, conf, link.host_ifname, link.mac, assigned)

    def _ensure_port(self, env: CniEnv, conf: NetConf, host_if: str, mac: str,
                     assigned: Sequence[Assigned], ofport_request: int | None = None) -> int:
        # Enough to rebuild local flows from OVSDB alone when etcd is unreachable at agent start.
        ids = portschema.PortIds(
            portschema.PortOwner(conf.name, env.container_id, env.ifname, env.netns), conf.vni,
            tuple(str(a.address.ip) for a in assigned), mac, conf.ipam.type,
            is_dhcp_server(conf, assigned), steps.encrypted(conf, self.host))
        return self.ports.ensure_port(self.host.bridge, host_if,
                                      external_ids=portschema.encode(ids),
                                      ofport_request=ofport_request,
                                      vswitchd_applied=False)  # a veth: its ofport says it all

    def _record(self, env: CniEnv, conf: NetConf, mac: str, port: str,
                assigned: Sequence[Assigned], routes: Sequence[Route]) -> EndpointRecord:
        pod = pods.pod_of(env)
        return EndpointRecord(network=conf.name, container_id=env.container_id,
                              ifname=env.ifname, host=self.host.name, vni=conf.vni,
                              ips=[str(a.address) for a in assigned], mac=mac, port=port,
                              netns=env.netns, mtu=steps.mtu(conf, self.host),
                              routes=[{"dst": str(r.dst), "gw": str(r.gw or "")} for r in routes],
                              ipam=conf.ipam.type, vtep=self.host.vtep,
                              labels=labels.endpoint_labels(conf, env),
                              pod_namespace=pod.namespace, pod_name=pod.name)

    def _unpublish(self, env: CniEnv, conf: NetConf) -> None:
        self.endpoints.delete_endpoint(conf.name, env.container_id, env.ifname,
                                       host=self.host.name)

    def _publish(self, env: CniEnv, conf: NetConf, link: veth.ContainerLink,
                 assigned: Sequence[Assigned], routes: Sequence[Route], undo: Undo, *,
                 registered: bool = False) -> None:
        rec = self._record(env, conf, link.mac, link.host_ifname, assigned, routes)
        if not registered:
            undo.append(lambda: self._unpublish(env, conf))
        self.endpoints.put_endpoint(rec)

    def _finish(self, env: CniEnv, conf: NetConf, owner: str, link: veth.ContainerLink,
                ofport: int, assigned: Sequence[Assigned], routes: Sequence[Route],
                installed: Sequence[Route], undo: Undo, t: Stopwatch,
                pending_gateway: Future[object] | None,
                pending_port: Future[object] | None = None,
                pending_record: Future[object] | None = None) -> bytes:
        """Gateway and local flows, then the result. `routes` as the result shows them,
        `installed` as they are in the container. `pending_port`: the port, still being
        attached with `ofport` asked for; the flows go in meanwhile, and follow the number
        OVS gave if it is another. `pending_record`: the endpoint record's put, joined after
        the flows too."""
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
            undo.append(lambda: self.flows.remove_endpoint(key))
        def install(ofport: int) -> None:
            self.flows.install_endpoint(key, LocalPort(conf.vni, link.mac, ips, ofport,
                                                       leases.is_dhcp(conf),
                                                       is_dhcp_server(conf, assigned)),
                                        labels.endpoint_labels(conf, env))
        install(ofport)
        t.lap("flows")
        if pending_record is not None:
            pending_record.result()  # its failure is this ADD's failure
            t.lap("endpoint (rest)")
        if pending_port is not None:
            attached = pending_port.result()
            t.lap("ovs-port (rest)")
            if attached != ofport and isinstance(attached, int):
                log.warning("OVS gave port %s ofport %s, not the %s asked for: its flows follow",
                            link.host_ifname, attached, ofport)
                ofport = attached
                install(ofport)
        result = build_result(conf.cni_version, Attachment(
            host_ifname=link.host_ifname, host_mac=link.host_mac, ifname=env.ifname,
            mac=link.mac, netns=env.netns, addresses=assigned, routes=routes,
            mtu=steps.mtu(conf, self.host)), conf.prev_result, conf.dns)
        log.info("ADD %s %s -> %s %s port %s (%s)", conf.name, owner, ",".join(ips), link.mac,
                 ofport, t)
        return encode(result)
