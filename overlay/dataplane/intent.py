"""The rules we want in br-int, and the objects they come from: the dataplane's model.

It knows nothing of the switch. Each change (a local port, a batch of remote endpoints, a
gateway) recomputes the rules of just the objects concerned (flows.py) and returns the
operations that turn the previous table into the new one (flowtable.py); dataplane.py decides
whether and how they reach the switch. Not thread-safe: the dataplane calls it under its state
lock.

`want_ops=False` says nobody will send the operations (the switch's table is about to be
replaced whole, or the dataplane is held): the model changes alike, at less cost, which is what
a restarted agent's first snapshot of 50,000 remote endpoints needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from overlay.dataplane.flows import (
    DesiredState,
    Gateway,
    LocalPort,
    RemoteEndpoint,
    base_flows,
    gateway_flows,
    local_port_flows,
    network_flows,
    remote_endpoint_flows,
)
from overlay.dataplane.flowtable import FlowTable, Owner
from overlay.dataplane.policy_state import PolicyState
from overlay.ovs.flow import Actions, Flow, Identity, Op


class Intent:
    def __init__(self, *, tunnel_ofport: int, generation: int = 0) -> None:
        self._tunnel_ofport = tunnel_ofport
        self._generation = generation
        self._local: dict[str, LocalPort] = {}
        self._remote: dict[str, RemoteEndpoint] = {}
        self._gateways: dict[int, Gateway] = {}  # vni -> this host's gateway port for it
        self._ports_by_vni: dict[int, dict[str, int]] = {}  # vni -> local key -> ofport
        self._vteps_by_vni: dict[int, Counter[str]] = {}    # remote endpoints per VTEP
        self._table = FlowTable()
        self._table.set(Owner.BASE, base_flows())
        # Network policy's rules live in the same table (policy_state.py), so that a policy's
        # operations go out in the same bundles as the endpoints'.
        self.policy = PolicyState(self._table)
        # Whose ingress is policed changes the network's broadcast replication (flows.py).
        self.policy.on_flood_change = self._refresh_flood

    # --- changes: each returns the operations for the switch ---------------------------------

    def set_local(self, key: str, port: LocalPort | None, *, want_ops: bool) -> list[Op]:
        old = self._local.get(key)
        if old == port:
            return []
        if old is not None:
            self._ports_by_vni[old.vni].pop(key, None)
            if not self._ports_by_vni[old.vni]:
                del self._ports_by_vni[old.vni]
        if port is None:
            del self._local[key]
            ops = self._table.drop(Owner.local(key))
        else:
            self._local[key] = port
            self._ports_by_vni.setdefault(port.vni, {})[key] = port.ofport
            ops = self._table.set(Owner.local(key), local_port_flows(port))
        for vni in {p.vni for p in (old, port) if p is not None}:
            ops += self._refresh_network(vni, want_ops)
        return ops + self.policy.set_local(key, port)

    def set_remote(self, changes: Mapping[str, RemoteEndpoint | None], *,
                   want_ops: bool) -> list[Op]:
        """A batch of remote endpoint puts (an endpoint) and deletes (None)."""
        ops: list[Op] = []
        touched: set[int] = set()
        for key, endpoint in changes.items():
            ops += self._set_remote(key, endpoint, touched, want_ops)
        for vni in touched:
            ops += self._refresh_network(vni, want_ops)
        return ops

    def set_gateway(self, vni: int, gateway: Gateway | None) -> list[Op] | None:
        """The gateway rules of network `vni` (None: none); None if nothing changed."""
        if self._gateways.get(vni) == gateway:
            return None
        if gateway is None:
            del self._gateways[vni]
            return self._table.drop(Owner.gateway(vni))
        self._gateways[vni] = gateway
        return self._table.set(Owner.gateway(vni), gateway_flows(gateway))

    def set_tunnel_ofport(self, ofport: int) -> bool:
        """Every tunnel rule names the port: rebuild the table (no operations: the dataplane
        replaces the switch's whole table). False if the port did not change."""
        if ofport == self._tunnel_ofport:
            return False
        self._tunnel_ofport = ofport
        self._table = FlowTable()
        self._table.set(Owner.BASE, base_flows())
        for key, port in self._local.items():
            self._table.set(Owner.local(key), local_port_flows(port))
        for vni in self._ports_by_vni:
            self._install_network(vni, want_ops=False)
        for vni, gw in self._gateways.items():
            self._table.set(Owner.gateway(vni), gateway_flows(gw))
        self.policy.reinstall(self._table)
        return True

    # --- reading -----------------------------------------------------------------------------

    def state(self) -> DesiredState:
        return DesiredState(self._tunnel_ofport, dict(self._local), dict(self._remote),
                            self._generation, dict(self._gateways))

    def rules(self) -> dict[Identity, Actions]:
        """identity -> actions of every rule we want."""
        return self._table.flows()

    def render(self, cookie: str) -> list[str]:
        return self._table.render(cookie)

    def __len__(self) -> int:
        return len(self._table)

    def counts(self) -> tuple[int, int, int]:
        """(local endpoints, remote endpoints, rules)."""
        return len(self._local), len(self._remote), len(self._table)

    def local_keys(self) -> set[str]:
        return set(self._local)

    def gateway(self, vni: int) -> Gateway | None:
        return self._gateways.get(vni)

    def local_vnis(self) -> dict[int, set[str]]:
        return {vni: set(keys) for vni, keys in self._ports_by_vni.items()}

    # --- the dependencies between objects ------------------------------------------------------

    def _set_remote(self, key: str, endpoint: RemoteEndpoint | None, touched: set[int],
                    want_ops: bool) -> list[Op]:
        old = self._remote.get(key)
        if old == endpoint:
            return []
        if old is not None:
            vteps = self._vteps_by_vni[old.vni]
            vteps[old.vtep] -= 1
            if vteps[old.vtep] <= 0:  # the last endpoint of that host in the network
                del vteps[old.vtep]
                touched.add(old.vni)
            del self._remote[key]
        if endpoint is not None:
            self._remote[key] = endpoint
            vteps = self._vteps_by_vni.setdefault(endpoint.vni, Counter())
            if vteps[endpoint.vtep] == 0:
                touched.add(endpoint.vni)
            vteps[endpoint.vtep] += 1
        # Remote rules exist only for networks with local ports: a host has no use for them
        # otherwise (see _refresh_network for when a network appears or goes).
        if endpoint is not None and endpoint.vni in self._ports_by_vni:
            return self._table.set(Owner.remote(key),
                                   remote_endpoint_flows(endpoint, self._tunnel_ofport),
                                   want_ops=want_ops)
        return self._table.drop(Owner.remote(key))

    def _refresh_network(self, vni: int, want_ops: bool) -> list[Op]:
        present = vni in self._ports_by_vni
        if present and not self._table.owns(Owner.network(vni)):
            return self._install_network(vni, want_ops)
        if not present:
            ops = []
            for key in self._remote_keys(vni):
                ops += self._table.drop(Owner.remote(key))
            return ops + self._table.drop(Owner.network(vni))
        return self._table.set(Owner.network(vni), self._network_flows(vni))

    def _install_network(self, vni: int, want_ops: bool) -> list[Op]:
        """A network's first local port: its remote endpoints become rules too."""
        ops = []
        for key in self._remote_keys(vni):
            ops += self._table.set(Owner.remote(key),
                                   remote_endpoint_flows(self._remote[key], self._tunnel_ofport),
                                   want_ops=want_ops)
        return ops + self._table.set(Owner.network(vni), self._network_flows(vni))

    def _remote_keys(self, vni: int) -> list[str]:
        """The remote endpoints of one network: a scan, needed only when the network's first
        local port arrives or its last one leaves (an index by VNI cost 2 MB at 50,000)."""
        return [key for key, e in self._remote.items() if e.vni == vni]

    def _network_flows(self, vni: int) -> list[Flow]:
        return network_flows(vni, self._ports_by_vni[vni].values(),
                             self._vteps_by_vni.get(vni, Counter()).keys(), self._tunnel_ofport,
                             self.policy.ingress_policed(vni))

    def _refresh_flood(self, vni: int) -> list[Op]:
        if vni not in self._ports_by_vni or not self._table.owns(Owner.network(vni)):
            return []
        return self._table.set(Owner.network(vni), self._network_flows(vni))
