"""The recovery path: make the switch hold exactly the whole table we want, atomically.

Used at start-up, after ovs-vswitchd restarted, after a bundle failed and when the periodic
count finds drift (dataplane.py decides when). Three ways, cheapest first:

1. **Adopt** (the first whole table of an agent run only). A restarted agent usually finds the
   switch holding exactly the table it wants: the previous run's, kept forwarding while no
   agent ran. One dump of the switch's table, compared with ours rule by rule (table,
   priority, match and actions, as bytes: Channel.holds_exactly), shows it; the rules are then
   left as they are, counters and all, under the cookies of the runs that wrote them. At
   50,000 remote endpoints this replaced re-adding 101,017 rules, which cost ovs-vswitchd
   ~1.8 s of CPU, with a dump of ~0.5 s. A rule's cookie thus says which run last *wrote* it;
   the run that verified the table is recorded in OVSDB (overlay-flow-verified, agent/agent.py).
2. **Replace over the channel**: one bundle that adds every rule under this run's cookie (an
   add over a rule with the same match and priority replaces it in place and, in OpenFlow
   1.3+, keeps its counters) and then deletes the rules still carrying another cookie we know
   of: the previous run's, and those a dump showed (adopted ones included). `dump-aggregate`
   then confirms the count: all our rules are there, so an equal count means nothing else is.
3. **`ovs-ofctl --bundle replace-flows`**, which dumps, diffs and removes everything else: when
   the switch holds more than we want (rules not ours), or a rule cannot go over the channel.

No rule is ever removed before its replacement is in: each way is one atomic bundle, or none.
"""

from __future__ import annotations

import logging
import time

from overlay.dataplane.flows import cookie
from overlay.errors import CniError
from overlay.ovs.flow import Actions, Identity
from overlay.ovs.openflow import Channel, Unsupported
from overlay.ovs.switch import Switch

log = logging.getLogger(__name__)


class WholeTable:
    """Not thread-safe: the dataplane calls it under its apply lock."""

    def __init__(self, *, switch: Switch, channel: Channel | None, generation: int) -> None:
        self._switch = switch  # ovs-ofctl's: it says every rule, and replaces exactly
        self._channel = channel
        self._cookie = cookie(generation)
        self._cookie_value = int(self._cookie, 16)
        # Cookies other than ours that rules in the switch may carry: the previous run's, and
        # whatever a dump showed. A replacement deletes them all.
        self._others = {int(cookie(generation - 1), 16)} if generation > 0 else set()
        self._adoptable = True  # the first whole table of this run may be the switch's own

    def install(self, flows: dict[Identity, Actions]) -> str:
        """Make the switch hold exactly `flows` (identity -> actions); says how it went."""
        started = time.monotonic()
        if self._channel is not None:
            if self._adoptable:
                self._adoptable = False
                if self._adopt(flows):
                    return (f"adopted the switch's table of {len(flows)} rules (a dump showed "
                            f"exactly ours) in {time.monotonic() - started:.2f} s")
            try:
                self._channel.add_all(flows, self._cookie_value,
                                      delete_cookies=tuple(sorted(self._others)))
            except (Unsupported, CniError) as exc:
                log.info("whole table through ovs-ofctl: %s", exc)
            else:
                found = self._switch.count()
                if found == len(flows):
                    self._others.clear()  # every rule carries our cookie now
                    return (f"whole table of {found} rules in one bundle over the channel, in "
                            f"{time.monotonic() - started:.2f} s")
                log.info("the switch holds %d rules after our %d: replacing the rest",
                         found, len(flows))
        self._switch.replace(flows, self._cookie_value)
        self._others.clear()
        return f"whole table of {len(flows)} rules through ovs-ofctl replace-flows"

    def _adopt(self, flows: dict[Identity, Actions]) -> bool:
        assert self._channel is not None
        try:
            same, cookies = self._channel.holds_exactly(flows)
        except (Unsupported, CniError) as exc:
            log.info("could not compare the switch's table with ours (%s); replacing it", exc)
            return False
        self._others |= cookies - {self._cookie_value}
        if not same:
            log.info("the switch's table differs from ours; replacing it")
        return same
