"""The persistent OpenFlow channel against a real ovs-vswitchd: the table it installs is the
table ovs-ofctl installs from the same text, rule for rule; modify_strict and delete_strict
touch exactly their rule; a rule it cannot encode is refused before anything is sent; and it
reconnects by itself after ovs-vswitchd restarted."""

from __future__ import annotations

import pytest

from overlay.dataplane.flows import DesiredState, Gateway, LocalPort, RemoteEndpoint
from overlay.dataplane.flowtable import compute_flows, compute_rules
from overlay.dataplane.wholetable import WholeTable
from overlay.errors import CniError
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import LabHost
from overlay.ovs.flow import DROP, Flow, GotoTable, Identity, Load, Op, Output, match
from overlay.ovs.flowtext import actions_text, identity_text
from overlay.ovs.ofctl import Ofctl
from overlay.ovs.openflow import Channel, Unsupported

COOKIE = (0x0FE1A7 << 40) | 7
STATE = DesiredState(
    tunnel_ofport=1, generation=7,
    local={"a": LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1", "fd00::1"), 5),
           "b": LocalPort(43, "0a:58:0a:00:00:03", ("10.0.0.1",), 6),
           "c": LocalPort(42, "0a:58:0a:00:00:04", ("10.0.0.4",), 7),
           "d": LocalPort(42, "0a:d4:00:00:00:05", ("10.0.0.5",), 8, True),  # dhcp, leased
           "e": LocalPort(42, "0a:d4:00:00:00:06", (), 9, True),  # dhcp, before its lease
           # Table 0's IPv6 and DHCP rules (neighbour discovery, DAD, DHCP server replies):
           # a dual-stack DHCP client, a dual-stack port named as its network's DHCP server
           # (no reply drops), an IPv6-only port with two addresses (NA for each target).
           "f": LocalPort(42, "0a:d4:00:00:00:07", ("10.0.0.7", "fd00::7"), 10, True),
           "g": LocalPort(42, "0a:d4:00:00:00:08", ("10.0.0.8", "fd00::8"), 11,
                          dhcp_server=True),
           "h": LocalPort(43, "0a:58:0a:00:00:0a", ("fd00::a", "fd00:1::a"), 12)},
    remote={"r1": RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",), "172.31.0.2"),
            "r2": RemoteEndpoint(43, "0a:58:0a:00:00:09", ("10.0.0.9", "fd00::9"), "172.31.0.3")})


def ofctl(h: LabHost, *args: str, stdin: str | None = None) -> str:
    return run(["ovs-ofctl", "-O", "OpenFlow14", *args], env={"OVS_RUNDIR": h.ovs_dir},
               input=stdin.encode() if stdin is not None else None).stdout


def table(h: LabHost, bridge: str) -> list[str]:
    return sorted(ofctl(h, "--no-stats", "dump-flows", f"unix:{h.ovs_dir}/{bridge}.mgmt")
                  .splitlines())


def as_ops(flows: list[Flow]) -> list[Op]:
    return [Op("add", f.identity, f.actions) for f in flows]


def forward_rule(priority: int, mac: str) -> Identity:
    return Identity(20, priority, match(reg0=42, eth_dst=mac))


# Every match field of table 0's IPv6 and DHCP rules, as the rule text spells it: STATE must
# produce each, or the comparisons below would not check its encoding (and its order).
IPV6_AND_DHCP = ("icmp6,", "ipv6_src=::,", "ipv6_dst=ff02::1:ff00:0/104", "icmp_type=135",
                 "icmp_type=136", "icmp_code=0", "nd_target=", "nd_sll=", "nd_tll=",
                 "nd_sll=00:00:00:00:00:00", "nd_tll=00:00:00:00:00:00", "udp6,tp_src=547",
                 "udp,tp_src=67", "nw_src=0.0.0.0,nw_dst=255.255.255.255")


def test_state_has_every_ipv6_and_dhcp_rule() -> None:
    lines = compute_flows(STATE)
    assert [kind for kind in IPV6_AND_DHCP if not any(kind in line for line in lines)] == []
    # The named DHCP server has no reply drops; the other addressed ports have theirs.
    drops = {line.split("in_port=")[1].split(",")[0] for line in lines if "tp_src=67," in line}
    assert "11" not in drops and {"5", "6", "7", "8", "10"} <= drops


def test_same_table_as_ovs_ofctl(two_bridge_host: LabHost) -> None:
    lines = compute_flows(STATE)
    ofctl(two_bridge_host, "--bundle", "replace-flows", f"unix:{two_bridge_host.ovs_dir}/bra.mgmt", "-",
          stdin="\n".join(lines) + "\n")
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    channel.apply(as_ops(compute_rules(STATE)), COOKIE)
    assert table(two_bridge_host, "bra") == table(two_bridge_host, "brb")
    assert len(table(two_bridge_host, "brb")) == len(lines) > 30


def test_same_table_with_chained_flood_rules(two_bridge_host: LabHost) -> None:
    """1,200 hosts in a network: its broadcast list goes on in tables 40 and 41 (resubmit)."""
    remote = {f"r{i}": RemoteEndpoint(42, f"0a:58:0a:01:{i >> 8:02x}:{i & 0xFF:02x}",
                                      (f"10.1.{i >> 8}.{i & 0xFF}",),
                                      f"172.30.{i >> 8}.{i & 0xFF}") for i in range(1, 1201)}
    state = DesiredState(tunnel_ofport=1, generation=7, local=STATE.local, remote=remote)
    lines = compute_flows(state)
    assert any("resubmit(,41)" in line for line in lines)
    ofctl(two_bridge_host, "--bundle", "replace-flows", f"unix:{two_bridge_host.ovs_dir}/bra.mgmt", "-",
          stdin="\n".join(lines) + "\n")
    ofctl(two_bridge_host, "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt")
    Channel(rundir=two_bridge_host.ovs_dir, bridge="brb").apply(as_ops(compute_rules(state)), COOKIE)
    assert table(two_bridge_host, "bra") == table(two_bridge_host, "brb")


def test_reinstall_under_a_new_cookie_keeps_counters_and_drops_the_rest(two_bridge_host: LabHost) -> None:
    """What a restarted agent sends: every wanted rule again under its own cookie, then a
    delete of what still carries the previous run's cookie. Counters survive the re-add."""
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    lines = compute_rules(STATE)
    ofctl(two_bridge_host, "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt")
    channel.apply(as_ops(lines), COOKIE)
    # One ARP request from port 5 (container "a", 10.0.0.1) through table 0: a counter moves.
    arp = ("ffffffffffff" "0a580a000001" "0806" "0001080006040001" "0a580a000001" "0a000001"
           "000000000000" "0a000002")
    ofctl(two_bridge_host, "packet-out", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt",
          f"in_port=5 packet={arp} actions=resubmit(,0)")

    def counted() -> list[str]:
        return [line for line in ofctl(two_bridge_host, "dump-flows",
                                       f"unix:{two_bridge_host.ovs_dir}/brb.mgmt",
                                       "table=0,arp,in_port=5").splitlines() if "n_packets=1" in line]
    assert len(counted()) == 1
    newer = COOKIE + 1
    kept = [op for op in as_ops(lines) if "->tun_dst" not in actions_text(op.actions)]  # no tunnels
    channel.apply(kept, newer, delete_cookies=(COOKIE,))
    after = table(two_bridge_host, "brb")
    assert len(after) == len(kept) < len(lines)
    assert all(f"cookie={newer:#x}," in line for line in after)
    assert len(counted()) == 1 and f"cookie={newer:#x}," in counted()[0]


def test_modify_and_delete_touch_only_their_rule(two_bridge_host: LabHost) -> None:
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    ops = as_ops(compute_rules(STATE))
    channel.apply(ops, COOKIE)
    before = table(two_bridge_host, "brb")
    forward = next(op for op in ops if op.identity[:2] == (20, 100)
                   and "tun_dst" in actions_text(op.actions))
    arp = next(op for op in ops if identity_text(op.identity).startswith("table=10,priority=100"))
    channel.apply([Op("modify_strict", forward.identity, DROP), Op("delete_strict", arp.identity)],
                  COOKIE)
    after = table(two_bridge_host, "brb")
    assert len(after) == len(before) - 1
    changed = set(after) - set(before)
    assert len(changed) == 1 and next(iter(changed)).endswith("actions=drop")


def test_what_it_cannot_say_is_refused_before_sending(two_bridge_host: LabHost) -> None:
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    channel.apply(as_ops(compute_rules(STATE)), COOKIE)
    before = table(two_bridge_host, "brb")
    with pytest.raises(Unsupported):
        channel.apply([Op("add", forward_rule(100, "0a:58:0a:00:00:63"), DROP),
                       Op("add", Identity(20, 90, match(eth_type=0x0800)), (Load("reg7", 1),))],
                      COOKIE)
    assert table(two_bridge_host, "brb") == before  # all or nothing: not even the first rule


def test_a_refused_bundle_changes_nothing(two_bridge_host: LabHost) -> None:
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    before = table(two_bridge_host, "brb")
    with pytest.raises(CniError):  # goto_table backwards is invalid in OpenFlow
        channel.apply([Op("add", forward_rule(7, "0a:58:0a:00:00:64"), DROP),
                       Op("add", Identity(20, 8, match(reg0=42)), (GotoTable(10),))], COOKIE)
    assert table(two_bridge_host, "brb") == before
    channel.apply([Op("add", forward_rule(7, "0a:58:0a:00:00:64"), DROP)], 1)
    assert len(table(two_bridge_host, "brb")) == len(before) + 1  # the connection is still usable


def test_reconnects_after_vswitchd_restart(two_bridge_host: LabHost) -> None:
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    channel.apply([Op("add", Identity(30, 9, match(reg0=42)), DROP)], 1)
    steps.stop_pidfile(f"{two_bridge_host.ovs_dir}/ovs-vswitchd.pid")
    steps.start_vswitchd(two_bridge_host.ovs_dir, two_bridge_host.netns)
    # Until it accepts a connection, not until its file exists: the file appears at bind,
    # before listen, and a connection then was refused (seen at load 14).
    steps.wait_for(lambda: run(["ovs-ofctl", "show", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt"],
                               check=False).returncode == 0, "brb's management socket")
    channel.apply([Op("add", Identity(30, 10, match(reg0=42)), DROP)], 1)
    assert any("priority=10,reg0=0x2a" in line for line in table(two_bridge_host, "brb"))


def rules_of(flows: list[Flow]) -> dict[Identity, tuple[object, ...]]:
    return dict(flows)


def test_holds_exactly_tells_the_same_table_from_any_other(two_bridge_host: LabHost) -> None:
    """The dump the switch gives back is byte for byte what we encode, for every kind of rule
    flows.py writes (chained flood rules, DHCP, IPv6 and gateway rules included)."""
    remote = {f"r{i}": RemoteEndpoint(42, f"0a:58:0a:01:{i >> 8:02x}:{i & 0xFF:02x}",
                                      (f"10.1.{i >> 8}.{i & 0xFF}",),
                                      f"172.30.{i >> 8}.{i & 0xFF}") for i in range(1, 1201)}
    state = DesiredState(tunnel_ofport=1, generation=7, local=STATE.local,
                         remote={**STATE.remote, **remote},
                         gateways={42: Gateway(42, "0e:6f:76:00:00:2a", "10.0.0.254", 9)})
    lines = compute_rules(state)
    rules = rules_of(lines)
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    ofctl(two_bridge_host, "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt")
    channel.apply(as_ops(lines), COOKIE)
    assert channel.holds_exactly(rules) == (True, {COOKIE})
    # One rule's actions changed behind our back, one rule missing, one rule too many: no.
    forward = next(i for i, a in rules.items()
                   if "->tun_dst" in actions_text(a) and i.table == 20)  # type: ignore[arg-type]
    channel.apply([Op("modify_strict", forward, DROP)], COOKIE)
    assert channel.holds_exactly(rules)[0] is False
    channel.apply([Op("modify_strict", forward, rules[forward])], COOKIE)
    assert channel.holds_exactly(rules)[0] is True
    assert channel.holds_exactly({i: a for i, a in rules.items() if i != forward})[0] is False
    channel.apply([Op("add", forward_rule(7, "0a:58:0a:00:00:65"), DROP)], COOKIE + 1)
    same, cookies = channel.holds_exactly(rules)
    assert same is False and cookies == {COOKIE, COOKIE + 1}


def test_a_restarted_run_adopts_an_identical_table_and_replaces_a_different_one(
        two_bridge_host: LabHost) -> None:
    """WholeTable at a restart: the same table is left as it is (its rules keep the previous
    run's cookie, and their counters); a different one is replaced in one bundle, and the
    rules of both earlier runs' cookies go."""
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    lines = compute_rules(STATE)
    rules = rules_of(lines)
    ofctl(two_bridge_host, "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt")
    channel.apply(as_ops(lines), COOKIE)
    ofctl_ = Ofctl(rundir=two_bridge_host.ovs_dir).on("brb")
    whole = WholeTable(switch=ofctl_, channel=channel, generation=8)
    assert whole.install(rules).startswith("adopted")
    assert all(f"cookie={COOKIE:#x}," in line for line in table(two_bridge_host, "brb"))
    # The next run (9) finds a table that differs in one rule: it replaces the whole table
    # under its own cookie, and nothing of runs 7 and 8 is left.
    channel.apply([Op("add", forward_rule(7, "0a:58:0a:00:00:66"), DROP)], COOKIE + 1)
    whole = WholeTable(switch=ofctl_, channel=channel, generation=9)
    assert whole.install(rules).startswith("whole table of")
    after = table(two_bridge_host, "brb")
    assert len(after) == len(rules) and all(f"cookie={COOKIE + 2:#x}," in line for line in after)


def test_a_bundle_the_switch_refuses_is_repaired_by_the_periodic_check(two_bridge_host: LabHost) -> None:
    """A real refusal: table 20 of `brc` is limited (OVSDB Flow_Table, overflow_policy=refuse)
    to the rules it holds, so the bundle of a new remote endpoint is refused whole (table
    full). The limit is lifted; with no other change, verify() puts the table back."""
    from overlay.dataplane.dataplane import Dataplane

    db = f"--db=unix:{two_bridge_host.ovs_dir}/db.sock"
    run(["ovs-vsctl", db, "--may-exist", "add-br", "brc", "--", "set", "bridge", "brc",
         "datapath_type=netdev", "fail_mode=secure"])
    dp = Dataplane(ofctl=Ofctl(rundir=two_bridge_host.ovs_dir), bridge="brc", tunnel_ofport=1, held=True,
                   channel=Channel(rundir=two_bridge_host.ovs_dir, bridge="brc"))
    dp.release()
    dp.install_endpoint("a", STATE.local["a"])
    in_20 = len(ofctl(two_bridge_host, "--no-stats", "dump-flows", f"unix:{two_bridge_host.ovs_dir}/brc.mgmt",
                      "table=20").splitlines())
    run(["ovs-vsctl", db, "--", "--id=@ft", "create", "Flow_Table", f"flow_limit={in_20}",
         "overflow_policy=refuse", "--", "set", "bridge", "brc", "flow_tables:20=@ft"])
    try:
        with pytest.raises(CniError):
            dp.update_remote({"r1": STATE.remote["r1"]})
        assert len(table(two_bridge_host, "brc")) < len(dp.flows())  # r1's rules are not in the switch
    finally:
        run(["ovs-vsctl", db, "clear", "bridge", "brc", "flow_tables"])
    assert not dp.verify()  # the failure alone says the table is unknown: replaced
    wanted = dp.wanted()
    assert any("->tun_dst" in actions_text(actions) for actions in wanted.values())  # r1's rules among them
    assert Channel(rundir=two_bridge_host.ovs_dir, bridge="brc").holds_exactly(wanted)[0]


def test_a_rule_changed_behind_our_back_is_put_back_by_the_periodic_check(
        two_bridge_host: LabHost) -> None:
    """A rule whose actions are not ours any more (as a modify lost on its way leaves it): the
    switch holds as many rules as we want, and verify() still finds and repairs it."""
    from overlay.dataplane.dataplane import Dataplane

    h = two_bridge_host
    run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "--may-exist", "add-br", "brd", "--",
         "set", "bridge", "brd", "datapath_type=netdev", "fail_mode=secure"])
    dp = Dataplane(ofctl=Ofctl(rundir=h.ovs_dir), bridge="brd", tunnel_ofport=1, held=True,
                   channel=Channel(rundir=h.ovs_dir, bridge="brd"))
    dp.release()
    dp.install_endpoint("a", STATE.local["a"])
    dp.update_remote({"r1": STATE.remote["r1"]})
    assert dp.verify()
    before = table(h, "brd")
    to_r1 = next(line for line in before if "->tun_dst" in line and "table=20" in line)
    rule = to_r1.split(" actions=")[0].split(", ", 1)[1]  # without the cookie
    ofctl(h, "--strict", "mod-flows", f"unix:{h.ovs_dir}/brd.mgmt", f"{rule},actions=drop")
    assert len(table(h, "brd")) == len(before) and table(h, "brd") != before
    assert not dp.verify()  # found by content, not by count: replaced
    assert table(h, "brd") == before and dp.verify()


def test_probes_compare_rules_not_substrings(two_bridge_host: LabHost) -> None:
    """Both switches say a rule is held when the switch has it, actions and all: every rule of
    the table, read back through the channel and through ovs-ofctl; a rule that differs only
    in its output port (1, where the switch has 12) or is absent is not held; and the count."""
    channel = Channel(rundir=two_bridge_host.ovs_dir, bridge="brb")
    ofctl_switch = Ofctl(rundir=two_bridge_host.ovs_dir).on("brb")
    gateway = Gateway(42, "0e:6f:76:00:00:2a", "10.0.0.254", 12)
    state = DesiredState(tunnel_ofport=1, generation=7, local=STATE.local, remote=STATE.remote,
                         gateways={42: gateway})
    rules = compute_rules(state)
    ofctl(two_bridge_host, "del-flows", f"unix:{two_bridge_host.ovs_dir}/brb.mgmt")
    channel.apply(as_ops(rules), COOKIE)
    assert all(channel.holds(rule) for rule in rules)
    assert all(ofctl_switch.holds(rule) for rule in rules)
    to_gateway = next(r for r in rules if r.identity[:2] == (20, 110))
    assert actions_text(to_gateway.actions) == "output:12"
    on_port_1 = Flow(to_gateway.identity, (Output(1),))
    assert not channel.holds(on_port_1) and not ofctl_switch.holds(on_port_1)
    absent = Flow(forward_rule(100, "0a:58:0a:00:00:99"), (Output(12),))
    assert not channel.holds(absent) and not ofctl_switch.holds(absent)
    assert channel.count() == ofctl_switch.count() == len(rules)
    assert channel.answers() and ofctl_switch.answers()
