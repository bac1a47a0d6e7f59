"""Which policy rules this host enforces, kept up to date by deltas (policy_flows.py says how
they look in the switch).

Inputs: policies (per network and name), what is known of every endpoint of the networks this
host follows (`PeerInfo`: network, addresses, labels; local and remote alike, from etcd), and
this host's ports (flows.LocalPort, from the CNI service and OVSDB). Each change recomputes
only what depends on it, and returns the operations the flow table (flowtable.py) derives:

  a policy              its own rules (owner "policy:<network>/<name>") and the detours of
                        the local ports of its network (whether each is policed);
  an endpoint's labels  the policies of its network that select it as a subject or a peer,
                        by its old labels or its new ones; its detours if it is local;
  a local port          the same, and its network's conntrack rules when the first port of
                        the network is policed or the last one is no more.

The addresses a selector selects are remembered per (network, selector) and kept up to date by
each endpoint change, so a policy put costs a scan of its network's endpoints only for a
selector never seen before, and a label change costs one match per remembered selector.

Not thread-safe: the dataplane's state lock covers it, as it covers intent.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from overlay.dataplane.flows import LocalPort
from overlay.dataplane.flowtable import FlowTable, OwnerId
from overlay.dataplane.policy_flows import (
    CompiledRule,
    cidr_prefixes,
    families,
    network_policy_flows,
    policy_base_flows,
    rule_flows,
    subject_addresses,
    subject_flows,
)
from overlay.dataplane.policy_places import PriorityRange, RuleKey, Zones
from overlay.model import EGRESS, INGRESS
from overlay.ovs.flow import Flow, Op
from overlay.policy.evaluate import ACTION_RANK
from overlay.policy.labels import Labels
from overlay.policy.model import Policy, Selector

BASE_OWNER: OwnerId = (0, "policy-base")


@dataclass(frozen=True)
class RuleLabel:
    """A rule as an operator names it: network, policy, direction, index in that list."""

    network: str
    policy: str
    direction: str
    index: int
    action: str
    log: bool


@dataclass
class StatsIndex:
    conj: dict[int, RuleLabel] = field(default_factory=dict)                   # conj_id ->
    plain: dict[tuple[int, int, int], RuleLabel] = field(default_factory=dict)  # (table, prio, vni)
    # (table, vni, source address for egress or ofport (reg1) for ingress) -> port key
    denied: dict[tuple[int, int, str], str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # port key -> "ip,ip"


@dataclass(frozen=True)
class PeerInfo:
    """What policies know of one endpoint, on any host: its record's network, addresses and
    labels (verified by agent/verify.py before they come here)."""

    network: str
    ips: tuple[str, ...]
    labels: Labels = field(default_factory=dict)


class PolicyState:
    def __init__(self, table: FlowTable) -> None:
        self._table = table
        self._policies: dict[str, dict[str, Policy]] = {}
        self._peers: dict[str, PeerInfo] = {}
        self._peer_keys: dict[str, set[str]] = {}           # network -> endpoint keys
        self._local: dict[str, LocalPort] = {}
        self._local_keys: dict[str, set[str]] = {}          # network -> local port keys
        self._selected: dict[tuple[str, Selector], set[str]] = {}
        self._ranges: dict[tuple[str, str], PriorityRange] = {}
        self._conj: dict[tuple[str, str, str, int], int] = {}
        self._next_conj = 1
        self._placed: dict[tuple[str, str], list[CompiledRule]] = {}
        self._policed: dict[str, tuple[bool, bool]] = {}    # local key -> (ingress, egress)
        # The network's broadcast replication, when a port's ingress becomes policed or no
        # longer is (intent.py sets it: the replication rule is the network's, not policy's).
        self.on_flood_change: Callable[[int], list[Op]] = lambda vni: []
        self.zones = Zones()

    # --- changes ------------------------------------------------------------------------------

    def set_policy(self, network: str, name: str, policy: Policy | None) -> list[Op]:
        old = self._policies.get(network, {}).get(name)
        if old == policy:
            return []
        if policy is None:
            self._policies[network].pop(name, None)
        else:
            self._policies.setdefault(network, {})[name] = policy
        relayout = self._unplace(network, old)
        relayout |= self._place(network, policy)
        names = set(self._policies.get(network, {})) if relayout else {name}
        ops = self._compile(network, names)
        if old is None or policy is None or old.selector != policy.selector or \
                (old.ingress is None) != (policy.ingress is None) or \
                (old.egress is None) != (policy.egress is None):
            ops += self._refresh_subjects(network)
        return ops

    def set_peers(self, changes: Mapping[str, PeerInfo | None]) -> list[Op]:
        """Endpoint puts (what is known of it) and deletes (None), local or remote."""
        stale: dict[str, set[str]] = {}
        subjects: set[str] = set()
        for key, info in changes.items():
            old = self._peers.get(key)
            if old == info:
                continue
            for known in (old, info):
                if known is not None:
                    stale.setdefault(known.network, set()).update(
                        self._depending(known.network, key, known.labels))
            self._move_peer(key, old, info)
            if key in self._local:
                subjects.add(key)
        ops: list[Op] = []
        for network, names in stale.items():
            ops += self._compile(network, names)
        for key in subjects:
            ops += self._refresh_subject(key)
        return ops

    def set_local(self, key: str, port: LocalPort | None) -> list[Op]:
        network = key.split("/", 1)[0]
        old = self._local.get(key)
        if old == port:
            return []
        keys = self._local_keys.setdefault(network, set())
        if port is None:
            self._local.pop(key, None)
            keys.discard(key)
        else:
            self._local[key] = port
            keys.add(key)
        if not keys:
            del self._local_keys[network]
        labels = self._labels(key)
        names = {n for n, p in self._policies.get(network, {}).items()
                 if p.selector.matches(labels)}
        if (old is None and len(keys) == 1) or not keys:  # the network's first or last port
            names = set(self._policies.get(network, {}))
        return self._compile(network, names) + self._refresh_subject(key, old)

    def reinstall(self, table: FlowTable) -> None:
        """The dataplane rebuilt its table (a new tunnel port): put every rule in again."""
        self._table = table
        for network in list(self._policies):
            self._compile(network, set(self._policies[network]))
        for key in list(self._local):
            self._policed.pop(key, None)
            self._refresh_subject(key)
        if any(self._policed.values()):
            table.set(BASE_OWNER, policy_base_flows(), want_ops=False)

    # --- reading ------------------------------------------------------------------------------

    def placed(self) -> dict[tuple[str, str], list[CompiledRule]]:
        """(network, policy name) -> its rules as placed in the switch."""
        return {k: list(v) for k, v in self._placed.items()}

    def stats_index(self) -> StatsIndex:
        """How to read the switch's counters of the policy tables (agent/policy_stats.py)."""
        index = StatsIndex()
        for (network, name), rules in self._placed.items():
            vni = self._vni(network)
            for rule in rules:
                label = RuleLabel(network, name, rule.direction, rule.index, rule.rule.action,
                                  rule.rule.log)
                index.conj[rule.conj_id] = label
                table = EGRESS if rule.direction == "egress" else INGRESS
                if vni is not None:
                    index.plain[(table, rule.priority, vni)] = label
        for key, (ingress, egress) in self._policed.items():
            port = self._local[key]
            index.addresses[key] = ",".join(subject_addresses(port))
            if egress:
                for ip in subject_addresses(port):
                    index.denied[(EGRESS, port.vni, ip)] = key
            if ingress:
                index.denied[(INGRESS, port.vni, str(port.ofport))] = key
        return index

    def ingress_policed(self, vni: int) -> frozenset[int]:
        """The ofports of network `vni` whose ingress a policy polices."""
        return frozenset(self._local[k].ofport for k, (ingress, _) in self._policed.items()
                         if ingress and self._local[k].vni == vni)

    def policed(self) -> dict[str, tuple[bool, bool]]:
        return dict(self._policed)

    def policies(self, network: str) -> list[Policy]:
        return list(self._policies.get(network, {}).values())

    def counts(self) -> tuple[int, int]:
        """(policies, endpoints known to policies)."""
        return sum(len(p) for p in self._policies.values()), len(self._peers)

    # --- the dependencies ---------------------------------------------------------------------

    def _labels(self, key: str) -> Labels:
        info = self._peers.get(key)
        return info.labels if info is not None else {}

    def _depending(self, network: str, key: str, labels: Labels) -> set[str]:
        """Policies of `network` that select this endpoint, as subject (if it is a local
        port) or as a peer, by these labels."""
        out = set()
        for name, policy in self._policies.get(network, {}).items():
            if key in self._local and policy.selector.matches(labels):
                out.add(name)
                continue
            for rules in (policy.ingress or (), policy.egress or ()):
                if any(isinstance(peer, Selector) and peer.matches(labels)
                       for rule in rules for peer in rule.peers):
                    out.add(name)
                    break
        return out

    def _move_peer(self, key: str, old: PeerInfo | None, info: PeerInfo | None) -> None:
        if old is not None:
            self._peer_keys[old.network].discard(key)
            del self._peers[key]
        if info is not None:
            self._peers[key] = info
            self._peer_keys.setdefault(info.network, set()).add(key)
        for (network, selector), keys in self._selected.items():
            if info is not None and info.network == network and selector.matches(info.labels):
                keys.add(key)
            else:
                keys.discard(key)

    def _selects(self, network: str, selector: Selector) -> set[str]:
        keys = self._selected.get((network, selector))
        if keys is None:
            keys = {k for k in self._peer_keys.get(network, ())
                    if selector.matches(self._peers[k].labels)}
            self._selected[(network, selector)] = keys
        return keys

    def _rule_keys(self, policy: Policy) -> list[tuple[str, RuleKey]]:
        out = []
        for direction, rules in (("ingress", policy.ingress), ("egress", policy.egress)):
            for index, rule in enumerate(rules or ()):
                out.append((direction, (policy.priority, ACTION_RANK[rule.action],
                                        policy.name, index)))
        return out

    def _place(self, network: str, policy: Policy | None) -> bool:
        if policy is None:
            return False
        relayout = False
        for direction, key in self._rule_keys(policy):
            relayout |= self._ranges.setdefault((network, direction), PriorityRange()).place(key)
            conj = (network, policy.name, direction, key[3])
            if conj not in self._conj:
                self._conj[conj] = self._next_conj
                self._next_conj += 1
        return relayout

    def _unplace(self, network: str, policy: Policy | None) -> bool:
        if policy is None:
            return False
        current = self._policies.get(network, {}).get(policy.name)
        keep = set(self._rule_keys(current)) if current is not None else set()
        for direction, key in self._rule_keys(policy):
            if (direction, key) not in keep:
                self._ranges[(network, direction)].remove(key)
                if current is None or not any(d == direction and k[3] == key[3]
                                              for d, k in keep):
                    self._conj.pop((network, policy.name, direction, key[3]), None)
        return False

    def _vni(self, network: str) -> int | None:
        keys = self._local_keys.get(network)
        return self._local[next(iter(keys))].vni if keys else None

    def _compile(self, network: str, names: set[str]) -> list[Op]:
        ops: list[Op] = []
        vni = self._vni(network)
        for name in names:
            owner: OwnerId = (0, f"policy:{network}/{name}")
            policy = self._policies.get(network, {}).get(name)
            if policy is None or vni is None:
                self._placed.pop((network, name), None)
                ops += self._table.drop(owner)
                continue
            placed = self._compile_policy(network, policy)
            self._placed[(network, name)] = placed
            flows: list[Flow] = []
            for rule in placed:
                flows += rule_flows(vni, rule)
            ops += self._table.set(owner, flows)
        return ops

    def _compile_policy(self, network: str, policy: Policy) -> list[CompiledRule]:
        ports = [self._local[k] for k in self._local_keys.get(network, ())
                 if policy.selector.matches(self._labels(k))]
        subjects = tuple(sorted(ip for port in ports for ip in subject_addresses(port)))
        subject_ports = tuple(sorted((port.ofport, fam) for port in ports
                                     for fam in families(port)))
        placed = []
        for direction, key in self._rule_keys(policy):
            rules = policy.ingress if direction == "ingress" else policy.egress
            assert rules is not None  # _rule_keys lists the directions the policy polices
            rule = rules[key[3]]
            peers: tuple[str, ...] | None = None
            if rule.peers:
                found: set[str] = set()
                for peer in rule.peers:
                    if isinstance(peer, Selector):
                        found.update(ip for k in self._selects(network, peer)
                                     for ip in self._peers[k].ips)
                    else:
                        found.update(cidr_prefixes(peer))
                peers = tuple(sorted(found))
            placed.append(CompiledRule(direction, key[3], rule, self._ranges[(network, direction)][key],
                                       self._conj[(network, policy.name, direction, key[3])],
                                       subjects, peers, subject_ports))
        return placed

    def _refresh_subjects(self, network: str) -> list[Op]:
        ops: list[Op] = []
        for key in list(self._local_keys.get(network, ())):
            ops += self._refresh_subject(key)
        return ops

    def _refresh_subject(self, key: str, old: LocalPort | None = None) -> list[Op]:
        """The detours of one local port, and its network's and the base's conntrack rules."""
        port = self._local.get(key)
        network = key.split("/", 1)[0]
        labels = self._labels(key)
        policies = self._policies.get(network, {}).values()
        ingress = port is not None and any(p.ingress is not None and p.selector.matches(labels)
                                           for p in policies)
        egress = port is not None and any(p.egress is not None and p.selector.matches(labels)
                                          for p in policies)
        before = self._policed.get(key, (False, False))
        if (ingress, egress) == before and old is None:
            return []
        owner: OwnerId = (0, f"policed:{key}")
        if port is None or not (ingress or egress):
            self._policed.pop(key, None)
            ops = self._table.drop(owner)
        else:
            self._policed[key] = (ingress, egress)
            ops = self._table.set(owner, subject_flows(port, self.zones.of(port.vni),
                                                       ingress=ingress, egress=egress))
        vni = port.vni if port is not None else (old.vni if old is not None else None)
        ops += self._refresh_network(vni)
        if vni is not None and (ingress != before[0] or (old is not None and before[0])):
            ops += self.on_flood_change(vni)
        return ops

    def _refresh_network(self, vni: int | None) -> list[Op]:
        if vni is None:
            return []
        policed_here = any(self._local[k].vni == vni for k in self._policed)
        owner: OwnerId = (0, f"policy-network:{vni}")
        ops = self._table.set(owner, network_policy_flows(vni, self.zones.of(vni))
                              if policed_here else [])
        return ops + self._table.set(BASE_OWNER, policy_base_flows() if self._policed else [])
