"""The flow table we want in the switch, kept as rules owned by objects, changed by deltas.

Each object (a local port, a remote endpoint, a network, the base) owns the rules flows.py
computes for it. Setting an object's rules returns the OpenFlow operations that turn the
previous table into the new one, touching only that object's rules: adds for new identities,
modify_strict where actions changed, delete_strict for identities no one claims any more.
Nothing is read back from the switch.

Two objects can claim the same identity. Between remote endpoints the reconciler settles it
before anything reaches this table (overlay/agent/claims.py: the record created first holds an
address or MAC, the same on every host, and the loser is logged, counted and shown by
`overlayctl doctor`), and one VNI belongs to one network, so here a contest is between a
local owner and a remote one: a container on this host and a record naming its address
elsewhere. OpenFlow keeps one rule per identity, so exactly one claim is installed: local
owners beat remote ones; the owner key breaks any other tie, only so that the outcome never
depends on the order of arrival. The table built by deltas in any order equals the table built
at once (flows.compute_flows), which the unit tests check. When the winner withdraws, the next
claimant's rule replaces it in the same operation list.
"""

from __future__ import annotations

from itertools import chain

from overlay.dataplane.flows import (
    DesiredState,
    base_flows,
    cookie,
    gateway_flows,
    local_port_flows,
    network_flows,
    remote_endpoint_flows,
)
from overlay.ovs.flow import ADD, DELETE, MODIFY, Actions, Flow, Identity, Op
from overlay.ovs.flowtext import flow_text

OwnerId = tuple[int, str]  # (rank, name): compared as a tuple, so rank 0 beats rank 1


class Owner:
    """Owner ids. Local ports, networks and the base rank above remote endpoints."""

    BASE: OwnerId = (0, "base")

    @staticmethod
    def local(key: str) -> OwnerId:
        return (0, "local:" + key)

    @staticmethod
    def network(vni: int) -> OwnerId:
        return (0, f"network:{vni}")

    @staticmethod
    def gateway(vni: int) -> OwnerId:
        return (0, f"gateway:{vni}")

    @staticmethod
    def remote(key: str) -> OwnerId:
        return (1, key)


__all__ = ["ADD", "DELETE", "MODIFY", "FlowTable", "Op", "Owner", "compute_flows", "compute_rules"]


class FlowTable:
    """Not thread-safe: the dataplane calls it under its state lock.

    Memory: the table holds every remote endpoint's rules (100,000 at 50,000 endpoints), so
    each owner's rules are one flat tuple (identity, actions, identity, actions, ...) and an
    identity maps to its winning owner alone; the installed actions are found in the winner's
    tuple. That is two tuples fewer per remote endpoint than (owner, actions) per identity.
    """

    def __init__(self) -> None:
        self._winner: dict[Identity, OwnerId] = {}       # identity -> owner of the installed rule
        self._others: dict[Identity, set[OwnerId]] = {}  # identity -> losing claimants (rare)
        # owner -> identity, actions, identity, actions, ...
        self._owned: dict[OwnerId, tuple[Identity | Actions, ...]] = {}

    def __len__(self) -> int:
        return len(self._winner)

    def owns(self, owner: OwnerId) -> bool:
        return owner in self._owned

    def set(self, owner: OwnerId, flows: list[Flow], *, want_ops: bool = True) -> list[Op]:
        """Make `flows` the rules of `owner`; returns the operations for the switch, unless
        told that nobody wants them (`want_ops=False`: the table will be pushed whole)."""
        new = dict(flows)  # identity -> actions; a Flow is that pair
        if not want_ops and owner not in self._owned:
            return self._add_quietly(owner, new)
        flat = self._owned.get(owner, ())
        old: dict[Identity, Actions] = dict(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]
        # The owner's new rules are what _actions finds for it from here on; its old ones
        # are in `old` for the comparisons below.
        if new:
            self._owned[owner] = tuple(chain.from_iterable(new.items()))
        else:
            self._owned.pop(owner, None)
        ops: list[Op] = []
        for identity, installed in old.items():
            if identity not in new:
                ops += self._unclaim(identity, owner, installed)
        for identity, actions in new.items():
            ops += self._claim(identity, owner, actions, old.get(identity))
        return ops

    def _add_quietly(self, owner: OwnerId, new: dict[Identity, Actions]) -> list[Op]:
        """set() of an owner that had no rules, without operations: what a restarted agent's
        first snapshot does 50,000 times, while nothing is pushed until the whole table is."""
        if new:
            self._owned[owner] = tuple(chain.from_iterable(new.items()))
        winner = self._winner
        for identity, actions in new.items():
            if identity in winner:
                self._claim(identity, owner, actions, None)  # a contest, decided as ever
            else:
                winner[identity] = owner
        return []

    def drop(self, owner: OwnerId) -> list[Op]:
        return self.set(owner, [])

    def flows(self) -> dict[Identity, Actions]:
        """identity -> actions of every installed rule."""
        # Owner by owner, keeping the rules each one wins: no search of an owner's tuple per
        # rule, which made this a quarter of a second at 100,000 rules.
        winner = self._winner
        out: dict[Identity, Actions] = {}
        for owner, flat in self._owned.items():
            for i in range(0, len(flat), 2):
                if winner[flat[i]] == owner:  # type: ignore[index]
                    out[flat[i]] = flat[i + 1]  # type: ignore[index,assignment]
        return out

    def rules(self) -> list[Flow]:
        return [Flow(identity, actions) for identity, actions in self.flows().items()]

    def render(self, cookie_value: str) -> list[str]:
        value = int(cookie_value, 16)
        return [flow_text(rule, value) for rule in self.rules()]

    def _actions(self, owner: OwnerId, identity: Identity) -> Actions:
        flat = self._owned[owner]
        for i in range(0, len(flat), 2):
            if flat[i] == identity:
                return flat[i + 1]  # type: ignore[return-value]
        raise KeyError(identity)

    def _claim(self, identity: Identity, owner: OwnerId, actions: Actions,
               previous: Actions | None) -> list[Op]:
        holder = self._winner.get(identity)
        if holder is None:
            self._winner[identity] = owner
            return [Op(ADD, identity, actions)]
        if holder == owner:
            return [] if previous == actions else [Op(MODIFY, identity, actions)]
        others = self._others.setdefault(identity, set())
        if owner < holder:  # the new claim wins; the old one waits in line
            installed = self._actions(holder, identity)
            others.add(holder)
            others.discard(owner)
            self._winner[identity] = owner
            return [Op(MODIFY, identity, actions)] if actions != installed else []
        others.add(owner)
        return []

    def _unclaim(self, identity: Identity, owner: OwnerId, installed: Actions) -> list[Op]:
        holder = self._winner[identity]
        others = self._others.get(identity)
        if holder != owner:
            if others is not None:
                others.discard(owner)
                if not others:
                    del self._others[identity]
            return []
        if not others:
            del self._winner[identity]
            return [Op(DELETE, identity)]
        successor = min(others)
        others.discard(successor)
        if not others:
            del self._others[identity]
        self._winner[identity] = successor
        actions = self._actions(successor, identity)
        return [Op(MODIFY, identity, actions)] if actions != installed else []


def compute_flows(state: DesiredState) -> list[str]:
    """The whole table at once, as text: the oracle for the incremental one."""
    return [flow_text(rule, int(cookie(state.generation), 16)) for rule in compute_rules(state)]


def compute_rules(state: DesiredState) -> list[Flow]:
    """The whole table at once: the recovery path, and the oracle for the incremental one."""
    table = FlowTable()
    table.set(Owner.BASE, base_flows())
    tun = state.tunnel_ofport
    ports_by_vni: dict[int, list[int]] = {}
    for key, p in state.local.items():
        table.set(Owner.local(key), local_port_flows(p))
        ports_by_vni.setdefault(p.vni, []).append(p.ofport)
    # A host only needs the remote endpoints of networks it has containers in.
    vteps_by_vni: dict[int, set[str]] = {}
    for key, e in state.remote.items():
        if e.vni in ports_by_vni:
            table.set(Owner.remote(key), remote_endpoint_flows(e, tun))
            vteps_by_vni.setdefault(e.vni, set()).add(e.vtep)
    for vni, ports in ports_by_vni.items():
        table.set(Owner.network(vni), network_flows(vni, ports, vteps_by_vni.get(vni, ()), tun))
    for vni, gw in state.gateways.items():
        table.set(Owner.gateway(vni), gateway_flows(gw))
    return table.rules()
