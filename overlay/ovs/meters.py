"""OpenFlow meters (OFPT_METER_MOD): the rate limits a rule's `controller` action goes through.

Why a meter must exist before the rules that name it: ovs-vswitchd resolves a controller
action's meter_id when the rule is added (ofproto.c, ofproto_fix_controller_action); a rule
added while its meter is missing keeps sending to the controller *unmetered*, with only a log
line, even once the meter appears. So the flow channel (openflow.py) puts its meters in on
every new connection, before any flow mod: a restarted ovs-vswitchd has its meters back
before the table that names them.

Meters work on the userspace (netdev) datapath, and on the kernel's from Linux 4.15: the
controller action becomes clone(meter, userspace) in the datapath, so packets over the rate
are dropped there and never reach ovs-vswitchd's handler threads nor the agent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

METER_MOD = 29
ADD, MODIFY = 0, 1
PKTPS, BURST, STATS = 0x2, 0x4, 0x8   # rate and burst in packets, keep statistics
BAND_DROP = 1
METER_MOD_FAILED, METER_EXISTS = 12, 1  # the error ADD gets for a meter already there


@dataclass(frozen=True)
class Meter:
    """One meter of one drop band: at most `rate` packets per second, `burst` at once."""

    meter_id: int
    rate: int
    burst: int


def meter_mod(command: int, meter: Meter, xid: int, version: int = 0x05) -> bytes:
    """An OFPT_METER_MOD (OpenFlow 1.3 and 1.4 alike) adding or modifying `meter`."""
    band = struct.pack("!HHII4x", BAND_DROP, 16, meter.rate, meter.burst)
    body = struct.pack("!HHI", command, PKTPS | BURST | STATS, meter.meter_id) + band
    return struct.pack("!BBHI", version, METER_MOD, 8 + len(body), xid) + body
