from overlay.dataplane.flows import (
    COOKIE,
    FORWARD,
    DesiredState,
    LocalPort,
    RemoteEndpoint,
    _arp_answers,
    _flow,
    link_local,
    local_port_flows,
    remote_endpoint_flows,
)
from overlay.dataplane.flowtable import compute_flows
from overlay.ovs.flow import Flow, Output, SetField
from overlay.ovs.flow import match as flow_match
from overlay.ovs.flowtext import actions_text, identity_text


def text(flows: list[Flow]) -> dict[str, str]:
    """identity -> actions, as ovs-ofctl writes them: what these tests read."""
    return {identity_text(f.identity): actions_text(f.actions) for f in flows}


def keyed(*objects: object) -> dict[str, object]:
    return {f"k{i}": o for i, o in enumerate(objects)}

C = f"cookie={COOKIE}"
ARP_REPLY = ("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{mac},load:0x2->NXM_OF_ARP_OP[],"
             "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
             "set_field:{mac}->arp_sha,set_field:{ip}->arp_spa,IN_PORT")


def test_empty_state_drops_everything() -> None:
    assert compute_flows(DesiredState(tunnel_ofport=1)) == [
        f"{C},table=0,priority=0,actions=drop", f"{C},table=10,priority=0,actions=drop",
        f"{C},table=20,priority=0,actions=drop", f"{C},table=30,priority=0,actions=drop"]


def test_one_local_and_one_remote_endpoint_exact_flows() -> None:
    state = DesiredState(
        tunnel_ofport=1,
        local=keyed(LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5),),
        remote=keyed(RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2"),))
    m1, m2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
    to_vtep = "set_field:172.31.0.2->tun_dst,set_field:42->tun_id,output:1"
    assert sorted(compute_flows(state)) == sorted([
        f"{C},table=0,priority=0,actions=drop", f"{C},table=10,priority=0,actions=drop",
        f"{C},table=20,priority=0,actions=drop", f"{C},table=30,priority=0,actions=drop",
        f"{C},table=0,priority=100,in_port=1,tun_src=172.31.0.2,tun_id=42,"
        "actions=load:42->NXM_NX_REG0[],goto_table:30",
        f"{C},table=0,priority=100,in_port=5,dl_src={m1},ip,nw_src=10.0.0.1,"
        "actions=load:42->NXM_NX_REG0[],goto_table:20",
        f"{C},table=0,priority=100,in_port=5,dl_src={m1},arp,arp_spa=10.0.0.1,arp_sha={m1},"
        "actions=load:42->NXM_NX_REG0[],goto_table:10",
        f"{C},table=10,priority=110,in_port=5,arp,arp_tpa=10.0.0.1,actions=drop",
        f"{C},table=0,priority=110,in_port=5,udp,tp_src=67,tp_dst=68,actions=drop",
        f"{C},table=20,priority=100,reg0=42,dl_dst={m1},actions=output:5",
        f"{C},table=30,priority=100,reg0=42,dl_dst={m1},actions=output:5",
        f"{C},table=20,priority=100,reg0=42,dl_dst={m2},actions={to_vtep}",
        f"{C},table=10,priority=100,reg0=42,arp,arp_op=1,arp_tpa=10.0.0.1,"
        f"actions={ARP_REPLY.format(mac=m1, ip='10.0.0.1')}",
        f"{C},table=10,priority=100,reg0=42,arp,arp_op=1,arp_tpa=10.0.0.2,"
        f"actions={ARP_REPLY.format(mac=m2, ip='10.0.0.2')}",
        f"{C},table=20,priority=50,reg0=42,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,"
        f"actions=output:5,{to_vtep}",
        f"{C},table=30,priority=50,reg0=42,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,"
        "actions=output:5",
    ])


def test_remote_endpoints_of_networks_without_local_ports_are_not_programmed() -> None:
    state = DesiredState(tunnel_ofport=1,
                         local=keyed(LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5),),
                         remote=keyed(RemoteEndpoint(43, "02:00:00:00:00:09", ("10.0.0.2",), "172.31.0.9"),))
    flows = "\n".join(compute_flows(state))
    assert "172.31.0.9" not in flows and "tun_id=43" not in flows


def test_overlapping_subnets_stay_apart_by_vni() -> None:
    # Same IP in two networks: every rule that mentions it also pins the VNI.
    state = DesiredState(tunnel_ofport=1, local=keyed(
        LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5),
        LocalPort(43, "02:00:00:00:00:03", ("10.0.0.1",), 6)))
    flows = compute_flows(state)
    arp = [f for f in flows if "arp_op=1,arp_tpa=10.0.0.1" in f]
    assert len(arp) == 2
    assert any("reg0=42" in f and "02:00:00:00:00:01" in f for f in arp)
    assert any("reg0=43" in f and "02:00:00:00:00:03" in f for f in arp)
    flood42 = [f for f in flows if "table=20,priority=50,reg0=42" in f][0]
    assert "output:5" in flood42 and "output:6" not in flood42


def test_flows_do_not_depend_on_input_order() -> None:
    a = LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5)
    b = LocalPort(42, "02:00:00:00:00:02", ("10.0.0.2",), 6)
    forward, backward = DesiredState(1, keyed(a, b)), DesiredState(1, keyed(b, a))
    assert sorted(compute_flows(forward)) == sorted(compute_flows(backward))


def test_ipv6_endpoint_admits_its_address_and_neighbour_discovery() -> None:
    state = DesiredState(tunnel_ofport=1, local=keyed(
        LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1", "fd00::1"), 5)))
    flows = compute_flows(state)
    base = "in_port=5,dl_src=02:00:00:00:00:01"
    for match in (f"{base},ipv6,ipv6_src=fd00::1", f"{base},ipv6,ipv6_src=fe80::ff:fe00:1",
                  f"{base},icmp6,ipv6_src=::,ipv6_dst=ff02::1:ff00:0/104,icmp_type=135,"
                  "icmp_code=0,nd_target=fd00::1"):
        assert any(f",{match},actions=load:42->NXM_NX_REG0[],goto_table:20" in f for f in flows)
    assert not any("fe80::/10" in f for f in flows)  # not every link-local address: its own
    assert not any("arp_tpa=fd00" in f or "nw_src=fd00" in f for f in flows)


def test_ipv4_only_endpoint_admits_no_ipv6() -> None:
    flows = compute_flows(DesiredState(1, keyed(LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5))))
    assert not any("ipv6" in f or "icmp6" in f for f in flows)


def test_tunnel_traffic_only_from_vteps_of_the_network() -> None:
    state = DesiredState(1, keyed(LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5)),
                         keyed(RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2"),
                          RemoteEndpoint(42, "02:00:00:00:00:03", ("10.0.0.3",), "172.31.0.3")))
    tunnel_in = [f for f in compute_flows(state) if "in_port=1," in f]
    assert [f.split(",")[4] for f in tunnel_in] == ["tun_src=172.31.0.2", "tun_src=172.31.0.3"]


def test_broadcast_to_a_thousand_hosts_is_split_into_chained_rules() -> None:
    # One rule cannot hold 1,000 VTEPs (OpenFlow messages stop at 64 KiB): 500 per rule, each
    # resubmitting to the next flood table, the last one without.
    from overlay.dataplane.flows import FLOOD, FLOOD_CHUNK, network_flows

    vteps = [f"172.31.{i // 250}.{i % 250 + 1}" for i in range(1100)]
    rules = {i.split(",")[0]: a for i, a in text(network_flows(42, [2], vteps, 1)).items()
             if "priority=50" in i and not i.startswith("table=30")}
    assert list(rules) == ["table=20", f"table={FLOOD}", f"table={FLOOD + 1}"]
    assert rules["table=20"].startswith("output:2,")
    assert rules["table=20"].endswith(f"resubmit(,{FLOOD})")
    assert rules[f"table={FLOOD}"].endswith(f"resubmit(,{FLOOD + 1})")
    assert "resubmit" not in rules[f"table={FLOOD + 1}"]
    listed = [v for actions in rules.values() for v in vteps if f"set_field:{v}->tun_dst" in actions]
    assert sorted(listed) == sorted(vteps)  # every host exactly once
    assert all(actions.count("->tun_dst") <= FLOOD_CHUNK for actions in rules.values())
    assert all(len(actions) < 40_000 for actions in rules.values())


def test_dhcp_client_before_its_lease_may_send_dhcp_from_nothing_and_nothing_else() -> None:
    mac = "0a:d4:00:00:00:01"
    flows = [f for f in compute_flows(DesiredState(
        tunnel_ofport=1, local=keyed(LocalPort(42, mac, (), 5, dhcp=True),)))
        if "table=0," in f and "in_port=5" in f]
    assert flows == [
        f"{C},table=0,priority=100,in_port=5,dl_src={mac},udp,nw_src=0.0.0.0,"
        "nw_dst=255.255.255.255,tp_src=68,tp_dst=67,actions=load:42->NXM_NX_REG0[],goto_table:20"]


def test_dhcp_client_with_its_lease_adds_its_address_and_keeps_dhcp_from_nothing() -> None:
    mac = "0a:d4:00:00:00:01"
    leased = LocalPort(42, mac, ("10.9.0.100",), 5, dhcp=True)
    plain = LocalPort(42, mac, ("10.9.0.100",), 5)
    extra = set(compute_flows(DesiredState(tunnel_ofport=1, local=keyed(leased)))) - \
        set(compute_flows(DesiredState(tunnel_ofport=1, local=keyed(plain))))
    assert extra == {f"{C},table=0,priority=100,in_port=5,dl_src={mac},udp,nw_src=0.0.0.0,"
                     "nw_dst=255.255.255.255,tp_src=68,tp_dst=67,"
                     "actions=load:42->NXM_NX_REG0[],goto_table:20"}


def test_remote_endpoint_rules_spelt_out_are_the_general_spelling() -> None:
    """remote_endpoint_flows writes its rules directly (it runs 50,000 times at a restart);
    they must be what _flow and _arp_answers write."""
    for e in (RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",), "172.31.0.2"),
              RemoteEndpoint(7, "0a:58:0a:00:00:03", ("10.0.0.3", "fd00::3", "10.0.1.3"),
                             "172.31.0.3"),
              RemoteEndpoint(8, "0a:d4:00:00:00:04", (), "172.31.0.4")):
        general = [_flow(FORWARD, 100, flow_match(reg0=e.vni, eth_dst=e.mac),
                         (SetField("tun_dst", e.vtep), SetField("tun_id", e.vni), Output(5))),
                   *_arp_answers(e.vni, e.mac, e.ips)]
        assert remote_endpoint_flows(e, 5) == general
        assert text(remote_endpoint_flows(e, 5)) == text(general)


V6_MAC = "0a:58:0a:06:00:02"
V6_BASE = f"in_port=5,dl_src={V6_MAC}"
V6_LL = "fe80::858:aff:fe06:2"


def v6_table0(**extra: bool) -> dict[str, str]:
    """match -> actions of table 0 for a dual-stack port (priority folded into the match)."""
    port = LocalPort(42, V6_MAC, ("10.6.0.2", "fd00:6::2"), 5, **extra)
    return {i: a for i, a in text(local_port_flows(port)).items() if i.startswith("table=0,")}


def test_link_local_is_the_kernels_eui64_of_the_mac() -> None:
    assert link_local(V6_MAC) == V6_LL
    assert link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"


def test_neighbour_advertisements_only_for_its_own_addresses_and_mac() -> None:
    flows = v6_table0()
    allowed = [i for i, a in flows.items() if "priority=120" in i and "icmp_type=136" in i]
    assert allowed and all("goto_table:20" in flows[i] for i in allowed)
    targets = {i.split("nd_target=")[1].split(",")[0] for i in allowed}
    assert targets == {"fd00:6::2", V6_LL}
    assert {i.split("nd_tll=")[1] for i in allowed} == {V6_MAC, "00:00:00:00:00:00"}
    assert {i.split("ipv6_src=")[1].split(",")[0] for i in allowed} == {"fd00:6::2", V6_LL}
    # Everything else of the kind, whatever its source, is dropped above the plain admission.
    assert flows["table=0,priority=110,in_port=5,icmp6,icmp_type=136"] == "drop"
    assert flows["table=0,priority=110,in_port=5,icmp6,icmp_type=135"] == "drop"


def test_neighbour_solicitations_carry_its_own_mac_or_none() -> None:
    flows = v6_table0()
    allowed = [i for i in flows if "priority=120" in i and "icmp_type=135" in i
               and "ipv6_src=::," not in i]
    assert {i.split("nd_sll=")[1] for i in allowed} == {V6_MAC, "00:00:00:00:00:00"}
    dad = [i for i in flows if "ipv6_src=::," in i]
    assert sorted(dad) == sorted(
        f"table=0,priority=120,{V6_BASE},icmp6,ipv6_src=::,ipv6_dst=ff02::1:ff00:0/104,"
        f"icmp_type=135,icmp_code=0,nd_target={t}" for t in ("fd00:6::2", V6_LL))


def test_no_router_advertisement_or_redirect_from_a_container() -> None:
    flows = v6_table0()
    for kind in (134, 137):
        assert flows[f"table=0,priority=110,in_port=5,icmp6,icmp_type={kind}"] == "drop"
        assert not any(f"icmp_type={kind}" in i for i in flows if "priority=120" in i)


def test_dhcp_server_replies_only_from_named_servers() -> None:
    plain = v6_table0()
    assert plain["table=0,priority=110,in_port=5,udp,tp_src=67,tp_dst=68"] == "drop"
    assert plain["table=0,priority=110,in_port=5,udp6,tp_src=547,tp_dst=546"] == "drop"
    server = v6_table0(dhcp_server=True)
    assert not any("tp_src=67" in i or "tp_src=547" in i for i in server)
    assert set(plain) - set(server) == {"table=0,priority=110,in_port=5,udp,tp_src=67,tp_dst=68",
                                        "table=0,priority=110,in_port=5,udp6,tp_src=547,tp_dst=546"}


def test_a_dhcp_client_without_a_lease_has_no_server_rules_to_need() -> None:
    flows = local_port_flows(LocalPort(42, V6_MAC, (), 5, dhcp=True))
    assert [i for i in text(flows) if i.startswith("table=0,")] == [
        f"table=0,priority=100,{V6_BASE},udp,nw_src=0.0.0.0,nw_dst=255.255.255.255,"
        "tp_src=68,tp_dst=67"]
