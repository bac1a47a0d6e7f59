"""ofproto/trace output read in our table names; only br-int's section counts."""

from __future__ import annotations

from overlay.cli.trace import Packet
from overlay.cli.trace_walk import parse_steps, verdict

TUNNELED = """Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=0a:58:0a:00:00:01

bridge("br-int")
----------------
 0. ip,in_port=2,dl_src=0a:58:0a:00:00:01,nw_src=10.0.0.1, priority 100, cookie 0xfe1a70000000001
    load:0x2a->NXM_NX_REG0[]
    goto_table:20
20. reg0=0x2a,dl_dst=0a:58:0a:00:00:02, priority 100, cookie 0xfe1a70000000001
    set_field:172.31.0.2->tun_dst
    set_field:0x2a->tun_id
    output:1
     -> output to native tunnel

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
    output:7

Final flow: icmp,reg0=0x2a
Datapath actions: tnl_push(...)
"""

DROPPED = """bridge("br-int")
----------------
 0. priority 0, cookie 0xfe1a70000000001
    drop

Final flow: unchanged
"""


def test_tunneled_walk_ignores_the_underlay_bridge() -> None:
    steps = parse_steps(TUNNELED, "br-int")
    assert [(s.table, s.table_name, s.priority) for s in steps] == [(0, "classify", 100),
                                                                    (20, "forward", 100)]
    assert steps[1].actions[-1] == "output:1"  # commentary ("->") left out
    v = verdict(steps, tunnel_ofport=1)
    assert (v.kind, v.vtep, v.vni, v.ports) == ("tunneled", "172.31.0.2", 42, [])


def test_catch_all_drop() -> None:
    steps = parse_steps(DROPPED, "br-int")
    assert steps[0].match == "" and steps[0].actions == ["drop"]
    v = verdict(steps, tunnel_ofport=1)
    assert (v.kind, v.table, v.table_name) == ("dropped", 0, "classify")


def test_packets_in_ofproto_trace_syntax() -> None:
    udp = Packet("udp", "0a:58:0a:00:00:01", "0a:58:0a:00:00:02", "10.0.0.1", "10.0.0.2", 5, 53)
    assert udp.flow("in_port=p1") == ("udp,in_port=p1,dl_src=0a:58:0a:00:00:01,dl_dst=0a:58:0a:"
                                      "00:00:02,nw_src=10.0.0.1,nw_dst=10.0.0.2,udp_src=5,udp_dst=53")
    arp = Packet("arp", "0a:58:0a:00:00:01", "", "10.0.0.1", "10.0.0.2")
    assert "arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.2" in arp.flow("in_port=p1")


REJECTED = """bridge("br-int")
----------------
 0. ip,in_port=3,dl_src=0a:58:0a:00:00:05,nw_src=10.0.0.5, priority 105, cookie 0xfe1a70000000001
    load:0x2a->NXM_NX_REG0[]
    ct(table=12,zone=42)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 12.

bridge("br-int")
----------------
12. conj_id=4,ip,reg0=0x2a, priority 900, cookie 0xfe1a70000000001
    controller(meter_id=20)
"""


def test_a_reject_rule_sends_the_packet_to_the_agent_not_to_a_drop() -> None:
    v = verdict(parse_steps(REJECTED, "br-int"), tunnel_ofport=1)
    assert (v.kind, v.table, v.table_name) == ("rejected", 12, "egress_policy")
