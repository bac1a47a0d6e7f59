"""DEL: undo every step of ADD whether or not the others are still there.

DEL succeeds when there is nothing left to undo. GC (housekeeping.py) and the agent's janitor
(agent/janitor.py) remove attachments through the same steps, under the same lock.
"""

from __future__ import annotations

from concurrent import futures

from overlay.cni import delegate
from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.ports import Allocator, EndpointStore, Flows, Gateways, HostInfo, Links, PortStore
from overlay.cni.steps import Stopwatch, StripedLock, log
from overlay.model import endpoint_key
from overlay.netlink import veth
from overlay.ovs import portschema
from overlay.store.records import owner_of


class Detacher:
    def __init__(self, *, host: HostInfo, endpoints: EndpointStore, ports: PortStore,
                 flows: Flows, allocator: Allocator, gateways: Gateways, links: Links,
                 lock: StripedLock, background: futures.Executor) -> None:
        self.host = host
        self.endpoints = endpoints
        self.ports = ports
        self.flows = flows
        self.allocator = allocator
        self.gateways = gateways
        self.links = links
        self.lock = lock  # held by the callers of teardown and teardown_orphan
        self._background = background

    def delete(self, env: CniEnv, conf: NetConf) -> bytes:
        t = Stopwatch()
        with self.lock(owner_of(env.container_id, env.ifname)):
            self.teardown(env, conf, env.container_id, env.ifname, t)
        log.info("DEL %s %s/%s (%s)", conf.name, env.container_id, env.ifname, t)
        return b""

    def teardown(self, env: CniEnv, conf: NetConf, container_id: str, ifname: str,
                 t: Stopwatch | None = None) -> None:
        """Remove one attachment of `conf`'s network, whatever of it is left. Idempotent.

        The host-side veth and port are named after container and interface only, so they are
        removed only if the port says it belongs to this network (or no port is left): a DEL
        for another network, sent after its ADD was refused, must not cut this one.
        """
        t = t or Stopwatch()
        if not conf.ipam.delegated:
            self._detach(conf.name, container_id, ifname, t)
            self.allocator.release(conf.name, owner_of(container_id, ifname))
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
        self.allocator.release(network, owner_of(container_id, ifname))

    def _detach(self, network: str, container_id: str, ifname: str,
                t: Stopwatch | None = None) -> None:
        """Flows, port and veth (if the port is this network's, or gone), endpoint record.

        The network's last container here takes the gateway along (an OVS port, routes, a rule,
        iptables rules: tens of ms), on another thread beside the rest, which does not depend
        on it. Every part is tried even if another fails; the first failure is DEL's."""
        t = t or Stopwatch()
        host_if = veth.hostside_name(container_id, ifname)
        key = endpoint_key(network, container_id, ifname)
        self.flows.remove_endpoint(key)
        t.lap("flows")
        gateway = self._background.submit(self.gateways.release, key)
        try:
            if portschema.network(self.ports.port_external_ids(host_if)) in (None, network):
                self.ports.delete_port(host_if)
                t.lap("ovs-port")
                self.links.delete_host_link(host_if)
                t.lap("veth")
            # Only if it names this host: a DEL here for a container ID attached on another
            # host (after its ADD here was refused) must leave that host's record alone.
            self.endpoints.delete_endpoint(network, container_id, ifname, host=self.host.name)
            t.lap("endpoint")
        finally:
            futures.wait([gateway])
            t.lap("gateway (rest)")
        gateway.result()
