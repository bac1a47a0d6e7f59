"""The OpenFlow pieces of `reject` against a real ovs-vswitchd (netdev): the flow channel puts
its meters in on connect (and changes a meter's rate on the next), a service connection gets
packet-ins once it asks for them (and the flow channel never does), and the meter bounds how
many reach it."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator

import pytest

from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost
from overlay.ovs.flow import Controller, Op, Resubmit, flow, match
from overlay.ovs.meters import Meter
from overlay.ovs.openflow import Channel
from overlay.ovs.packetin import OFPP_CONTROLLER, REASON_ACTION, PacketIn, PacketIns

BRIDGE = "brrj"
FRAME = bytes.fromhex("0a580a000003" "0a580a000002" "0800") + bytes(range(46))


@pytest.fixture(scope="module")
def host(lab_factory: Callable[..., Lab]) -> Iterator[LabHost]:
    lab = lab_factory(hosts=1, network=None)
    h = lab.hosts[0]
    run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "--may-exist", "add-br", BRIDGE,
         "--", "set", "bridge", BRIDGE, "datapath_type=netdev", "fail_mode=secure"])
    yield h


def meters(h: LabHost) -> str:
    return run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", f"unix:{h.ovs_dir}/{BRIDGE}.mgmt"],
               env={"OVS_RUNDIR": h.ovs_dir}).stdout


def band_drops(h: LabHost) -> int:
    out = run(["ovs-ofctl", "-O", "OpenFlow13", "meter-stats", f"unix:{h.ovs_dir}/{BRIDGE}.mgmt"],
              env={"OVS_RUNDIR": h.ovs_dir}).stdout
    found = re.search(r"0: packet_count:(\d+)", out)
    assert found, out
    return int(found.group(1))


def receive_all(listener: PacketIns, quiet: float = 0.5) -> list[PacketIn]:
    """Packet-ins until none came for `quiet` seconds."""
    out: list[PacketIn] = []
    while (pin := listener.receive(quiet)) is not None:
        out.append(pin)
    return out


def test_meters_go_in_on_connect_and_a_new_rate_replaces_the_old(host: LabHost) -> None:
    Channel(rundir=host.ovs_dir, bridge=BRIDGE, meters=(Meter(20, 50, 10),)).count()
    assert re.search(r"meter=20 pktps burst stats bands=\s*type=drop rate=50 burst_size=10",
                     meters(host)), meters(host)
    Channel(rundir=host.ovs_dir, bridge=BRIDGE, meters=(Meter(20, 100, 100),)).count()
    assert re.search(r"meter=20 pktps burst stats bands=\s*type=drop rate=100 burst_size=100",
                     meters(host)), meters(host)


def test_packet_ins_reach_the_listener_only_and_the_meter_bounds_them(host: LabHost) -> None:
    rate, burst = 100, 100
    channel = Channel(rundir=host.ovs_dir, bridge=BRIDGE, meters=(Meter(20, rate, burst),))
    rule = flow(12, 10, match(in_port=OFPP_CONTROLLER),
                (Controller(meter_id=20),))
    channel.apply([Op("add", rule.identity, rule.actions)], cookie=7)
    listener, sender = PacketIns(rundir=host.ovs_dir, bridge=BRIDGE), \
        PacketIns(rundir=host.ovs_dir, bridge=BRIDGE)
    listener.connect()
    sender.connect()
    time.sleep(1.5)  # the meter's bucket full again after the first test

    sender.send((Resubmit(12),), FRAME)
    pin = listener.receive(5.0)
    assert pin is not None
    assert (pin.table, pin.reason, pin.cookie, pin.in_port) == \
        (12, REASON_ACTION, 7, OFPP_CONTROLLER)
    assert pin.data == FRAME and pin.total_len == len(FRAME)
    assert pin.tun_src is None and pin.tun_id is None
    assert channel.count() == 1  # the flow channel still answers: it got no packet-in to skip

    time.sleep(1.5)
    drops_before, sent = band_drops(host), 2000
    started = time.monotonic()
    for _ in range(sent):
        sender.send((Resubmit(12),), FRAME)
    elapsed = time.monotonic() - started
    got = receive_all(listener)
    bound = burst + rate * (elapsed + 0.5)  # the bucket refills while the last ones come in
    print(f"{sent} sent in {elapsed:.2f} s: {len(got)} packet-ins (bound {bound:.0f})")
    assert 0 < len(got) <= bound
    assert band_drops(host) - drops_before >= sent - len(got) - rate * (elapsed + 0.5)
    listener.close()
    sender.close()


def test_a_rule_added_before_its_meter_stays_unmetered(host: LabHost) -> None:
    """Why the flow channel puts its meters in first (ovs/meters.py): ovs-vswitchd binds a
    controller action to its meter when the rule is added, not when the packet comes."""
    rule = flow(13, 10, match(in_port=OFPP_CONTROLLER), (Controller(meter_id=21),))
    Channel(rundir=host.ovs_dir, bridge=BRIDGE).apply([Op("add", rule.identity, rule.actions)],
                                                      cookie=7)
    with open(os.path.join(host.ovs_dir, "ovs-vswitchd.log")) as f:
        assert "controller action specified an unknown meter id: 21" in f.read()  # its only sign
    Channel(rundir=host.ovs_dir, bridge=BRIDGE, meters=(Meter(21, 10, 10),)).count()
    assert "meter=21" in meters(host)
    listener, sender = PacketIns(rundir=host.ovs_dir, bridge=BRIDGE), \
        PacketIns(rundir=host.ovs_dir, bridge=BRIDGE)
    listener.connect()
    sender.connect()
    started = time.monotonic()
    for _ in range(200):
        sender.send((Resubmit(13),), FRAME)
    got = receive_all(listener)
    elapsed = time.monotonic() - started
    assert len(got) > 10 + 10 * elapsed, (len(got), elapsed)  # more than meter 21 lets through
    listener.close()
    sender.close()
