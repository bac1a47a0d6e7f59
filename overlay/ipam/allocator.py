"""Cluster-wide unique IP allocation, backed by etcd.

An allocation is one key, /overlay/v1/ipam/<network>/<ip> -> "<container>/<ifname>", created
only if absent in an etcd transaction. etcd's linearizable compare is the whole concurrency
story: two agents that pick the same address race on the same key and exactly one wins; the
loser picks again. Allocations have no lease, so an agent restart never frees an address.
"""

from __future__ import annotations

from overlay.cni.errors import CniError, Code
from overlay.cni.netconf import Address, AddressRange, IpamConfig
from overlay.ipam.pool import candidates
from overlay.store.etcd import Store


class EtcdIpam:
    def __init__(self, *, store: Store) -> None:
        self._store = store

    def allocate(self, network: str, owner: str, ipam: IpamConfig) -> tuple[Address, AddressRange]:
        """Reserve one address for `owner`; calling again for the same owner returns the same one."""
        held = self._store.allocations(network)
        for ip, holder in held.items():
            if holder == owner:
                return ip, self._range_of(ip, ipam)
        for rng in ipam.ranges:
            used = {ip for ip in held if ip in rng.subnet}
            for ip in candidates(rng, used):
                if self._store.claim_ip(network, ip, owner):
                    return ip, rng
        raise CniError(Code.IPAM_EXHAUSTED, f"network {network!r} has no free address left",
                       "ranges: " + ", ".join(f"{r.start}-{r.end}" for r in ipam.ranges))

    def release(self, network: str, owner: str) -> None:
        """Free every address `owner` holds in `network`; a no-op when it holds none."""
        for ip, holder in self._store.allocations(network).items():
            if holder == owner:
                self._store.release_ip(network, ip, owner)

    @staticmethod
    def _range_of(ip: Address, ipam: IpamConfig) -> AddressRange:
        for rng in ipam.ranges:
            if ip in rng.subnet:
                return rng
        raise CniError(Code.NETWORK_CONFLICT,
                       f"address {ip} held for this container is outside the netconf's ranges")
