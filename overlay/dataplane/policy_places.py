"""Where a policy's rules go: their OpenFlow priorities, and each network's conntrack zone
(policy_state.py hands them out, policy_flows.py writes them into rules)."""

from __future__ import annotations

import bisect
import logging

from overlay.dataplane.policy_flows import BOTTOM, TOP

log = logging.getLogger(__name__)

RuleKey = tuple[int, int, str, int]  # (policy priority, action rank, policy name, rule index)


class PriorityRange:
    """OpenFlow priorities for the rules of one network and direction, in the evaluator's
    order (RuleKey), each its own. A new rule takes the middle of the gap between its
    neighbours, so the rules already in place keep theirs; only when no gap is left are all
    spread out again (place() then says so, and every rule is recompiled)."""

    def __init__(self) -> None:
        self._keys: list[RuleKey] = []
        self._prio: dict[RuleKey, int] = {}

    def place(self, key: RuleKey) -> bool:
        if key in self._prio:
            return False
        i = bisect.bisect(self._keys, key)
        high = self._prio[self._keys[i - 1]] if i > 0 else TOP + 1
        low = self._prio[self._keys[i]] if i < len(self._keys) else BOTTOM - 1
        self._keys.insert(i, key)
        if high - low >= 2:
            self._prio[key] = (high + low) // 2
            return False
        step = max(1, (TOP - BOTTOM) // (len(self._keys) + 1))
        for n, k in enumerate(self._keys):
            self._prio[k] = TOP - n * step
        return True

    def remove(self, key: RuleKey) -> None:
        if self._prio.pop(key, None) is not None:
            self._keys.remove(key)

    def __getitem__(self, key: RuleKey) -> int:
        return self._prio[key]


class Zones:
    """A conntrack zone per network (VNI) on this host, for policy's connection tracking.

    A zone has 16 bits and a VNI 24, so two VNIs can want the same zone: the second takes the
    next free one, and two networks never share one (their connections would mix). The zone
    wanted is never the network's gateway zone (gateway/spec.py: 1 + (vni - 1) % 65535, used by
    iptables for the gateway's masquerade): on the kernel datapath both live in the kernel's
    one conntrack table, and an entry OVS committed in the gateway's zone would be found by the
    gateway's lookup, whose NAT would then never be set up. So: that zone with its top bit
    flipped."""

    def __init__(self) -> None:
        self._zone: dict[int, int] = {}
        self._taken: set[int] = set()

    def of(self, vni: int) -> int:
        zone = self._zone.get(vni)
        if zone is None:
            zone = (1 + (vni - 1) % 0xFFFF) ^ 0x8000 or 0x7FFF
            while zone in self._taken:
                zone = zone % 0xFFFF + 1
            self._zone[vni] = zone
            self._taken.add(zone)
            log.debug("network VNI %d: conntrack zone %d", vni, zone)
        return zone
