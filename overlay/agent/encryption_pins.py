"""Encryption is a one-way door for a network on this host: a record may make a network
encrypted, never clear again.

Network records live in etcd, where every host may write them (docs/etcd-auth.md). Were the
`encrypted` flag believed as written, one stray or hostile write of `"encrypted": false` would
send every host's VXLAN of that network in clear over the underlay, and admit it from VTEPs
again. So a network this agent has once seen encrypted, or whose local ports were attached
as encrypted (their OVSDB external_ids, ovs/portschema.py: what survives an agent restart),
stays encrypted here whatever a later record says: the record is rejected as
`encryption_downgrade` (counted, logged, listed by `overlayctl doctor`) and the network keeps
going through WireGuard only. Turning encryption off is a new network, as in Docker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from overlay.agent.verify import NetworkFacts, Rejected


class EncryptionPins:
    def __init__(self, encrypted_networks: Iterable[str],
                 reject: Callable[[str, Rejected], None]) -> None:
        self._pinned = set(encrypted_networks)
        self._reject = reject  # (record key, why): counted and listed like any rejected record

    def hold(self, key: str, name: str, facts: NetworkFacts) -> NetworkFacts:
        """The facts to believe of network `name` from its record at `key`."""
        if facts.encrypted:
            self._pinned.add(name)
        elif name in self._pinned:
            self._reject(key, Rejected(
                "encryption_downgrade", f"network {name} stays encrypted here, whatever "
                "its record says"))
            return facts._replace(encrypted=True)
        return facts
