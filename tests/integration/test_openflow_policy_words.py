"""The words network policy adds to the flow vocabulary (conntrack, conjunctive matches,
masked TCP/SCTP ports, IPv4 prefixes), against a real ovs-vswitchd: a table sent over the
OpenFlow channel is the table ovs-ofctl installs from the same text, and the switch's dump of
it is byte for byte what we encode (holds_exactly)."""

from __future__ import annotations

from overlay.lab.shell import run
from overlay.lab.topology import LabHost
from overlay.ovs.flow import (
    IP,
    IPV6,
    Conjunction,
    Controller,
    Ct,
    GotoTable,
    Load,
    Op,
    Output,
    Resubmit,
    flow,
    match,
)
from overlay.ovs.flowtext import flow_text
from overlay.ovs.openflow import Channel

COOKIE = (0x0FE1A7 << 40) | 9

RULES = [
    flow(0, 105, match(in_port=5, eth_src="0a:58:0a:00:00:01", **IP, ipv4_src="10.0.0.1"),
         (Load("reg0", 42), Ct(zone=3, table=12))),
    flow(12, 65000, match(reg0=42, ct_state="+trk+est-inv"), (GotoTable(20),)),
    flow(12, 65000, match(reg0=42, ct_state="+trk+rel-inv"), (GotoTable(20),)),
    flow(12, 64999, match(ct_state="+trk+inv"), ()),
    flow(12, 900, match(reg0=42, **IP, ipv4_src="10.0.0.1"), (Conjunction(7, 1, 3),)),
    flow(12, 900, match(reg0=42, **IP, ipv4_dst="10.0.0.0/24"), (Conjunction(7, 2, 3),)),
    flow(12, 900, match(reg0=42, **IPV6, ipv6_dst="fd00::/64"), (Conjunction(7, 2, 3),)),
    flow(12, 900, match(eth_type=0x0800, ip_proto=6, tcp_dst="0x50/0xfff0"),
         (Conjunction(7, 3, 3),)),
    flow(12, 900, match(eth_type=0x0800, ip_proto=6, tcp_dst=443), (Conjunction(7, 3, 3),)),
    flow(12, 900, match(eth_type=0x0800, ip_proto=132, sctp_dst="0x1000/0xfc00"),
         (Conjunction(7, 3, 3),)),
    flow(12, 900, match(reg0=42, **IPV6, ipv6_src="fd00::1"), (Conjunction(7, 1, 3),)),
    flow(12, 900, match(eth_type=0x86DD, ip_proto=6, tcp_dst="0x50/0xfff0"),
         (Conjunction(7, 3, 3),)),
    flow(12, 900, match(eth_type=0x86DD, ip_proto=17, tp_dst=53), (Conjunction(7, 3, 3),)),
    flow(12, 900, match(conj_id=7), (GotoTable(13),)),
    flow(12, 800, match(conj_id=8), (Controller(meter_id=20),)),
    flow(12, 65001, match(eth_type=0x86DD, ip_proto=58, icmp_type=135), (GotoTable(20),)),
    flow(13, 100, match(reg0=42, **IPV6), (Ct(zone=3, commit=True), GotoTable(20))),
    flow(13, 100, match(reg0=42, **IP), (Ct(zone=3, commit=True), GotoTable(20))),
    # Broadcast and multicast under ingress policy: reg1 names the port a copy is for.
    flow(20, 105, match(reg0=42, eth_dst="0a:58:0a:00:00:01", **IP),
         (Load("reg1", 5), Ct(zone=3, table=90))),
    flow(20, 50, match(reg0=42, eth_dst="01:00:00:00:00:00/01:00:00:00:00:00"),
         (Output(6), Load("reg1", 5), Resubmit(90), Output(7))),
    flow(90, 65000, match(ct_state="+trk+est-inv", eth_dst="00:00:00:00:00:00/01:00:00:00:00:00"),
         (GotoTable(92),)),
    flow(90, 1, match(reg0=42, reg1=5, **IPV6), ()),
    flow(92, 100, match(reg0=42, reg1=5), (Output(5),)),
    flow(90, 100, match(reg0=42, ct_zone=3, eth_type=0x0800), (Output(5),)),
]


def table(h: LabHost, bridge: str) -> list[str]:
    out = run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
               f"unix:{h.ovs_dir}/{bridge}.mgmt"], env={"OVS_RUNDIR": h.ovs_dir}).stdout
    return sorted(out.splitlines())


def test_policy_words_install_as_ovs_ofctl_installs_them(two_bridge_host: LabHost) -> None:
    text = "\n".join(flow_text(f, COOKIE) for f in RULES) + "\n"
    run(["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "replace-flows",
         f"unix:{two_bridge_host.ovs_dir}/bra.mgmt", "-"], env={"OVS_RUNDIR": two_bridge_host.ovs_dir},
        input=text.encode())
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    channel.apply([Op("add", f.identity, f.actions) for f in RULES], COOKIE)
    dumped = table(two_bridge_host, "brb")
    assert dumped == table(two_bridge_host, "bra")
    assert len(dumped) == len(RULES)
    # What the switch shows is what the rules say (a sample of each new word).
    joined = "\n".join(dumped)
    for word in ("ct(table=12,zone=3)", "ct(commit,zone=3)", "conjunction(7,3/3)", "conj_id=7",
                 "ct_state=+est-inv+trk",
                 "controller(meter_id=20)", "tp_dst=0x50/0xfff0",
                 "nw_dst=10.0.0.0/24", "ct_zone=3"):
        assert word in joined, word


def test_the_switch_reports_policy_rules_byte_for_byte_as_encoded(two_bridge_host: LabHost) -> None:
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    run(["ovs-ofctl", "-O", "OpenFlow14", "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt"],
        env={"OVS_RUNDIR": two_bridge_host.ovs_dir})
    channel.apply([Op("add", f.identity, f.actions) for f in RULES], COOKIE)
    rules: dict[object, object] = dict(RULES)
    assert channel.holds_exactly(rules) == (True, {COOKIE})  # type: ignore[arg-type]
    fewer = dict(RULES[:-1])
    assert channel.holds_exactly(fewer)[0] is False  # type: ignore[arg-type]


