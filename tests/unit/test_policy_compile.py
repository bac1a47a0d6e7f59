"""Policies compiled to rules (overlay/dataplane/policy_flows.py, policy_state.py): the rules'
decisions, walked in Python (overlay/dataplane/interpret.py), are the reference evaluator's
(overlay/policy/evaluate.py) for random policies, labels and packets; a rule costs the sum of
its subjects, peers and ports; the deltas of every change leave the table the model holds."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.dataplane.flows import LocalPort, RemoteEndpoint, link_local
from overlay.dataplane.intent import Intent
from overlay.dataplane.interpret import walk
from overlay.dataplane.policy_flows import cidr_prefixes, port_masks
from overlay.dataplane.policy_places import PriorityRange, Zones
from overlay.dataplane.policy_state import PeerInfo
from overlay.model import EGRESS, INGRESS
from overlay.ovs.flow import ETH_IP, ETH_IPV6, Actions, Identity
from overlay.policy.evaluate import verdict
from overlay.policy.model import CidrPeer, Policy, PortRange, Requirement, Rule, Selector

VNI, TUNNEL, NET = 42, 1, "n"
KEYS, VALUES = ("app", "tier"), ("a", "b")


def test_port_masks_cover_exactly_the_range() -> None:
    for low, high in ((80, 80), (80, 95), (1, 65535), (1000, 2000), (0, 0), (65535, 65535)):
        masks = port_masks(low, high)
        covered = {p for p in range(max(low - 5, 0), min(high + 6, 65536))
                   if any(p & m == v for v, m in masks)}
        assert covered == set(range(low, high + 1))
    assert port_masks(80, 95) == [(80, 0xFFF0)]
    assert len(port_masks(1, 65535)) == 16


def test_cidr_less_its_exceptions() -> None:
    peer = CidrPeer(ipaddress.ip_network("10.0.0.0/24"), (ipaddress.ip_network("10.0.0.0/26"),))
    assert cidr_prefixes(peer) == ["10.0.0.64/26", "10.0.0.128/25"]
    whole = CidrPeer(ipaddress.ip_network("10.0.0.0/24"), (ipaddress.ip_network("10.0.0.0/16"),))
    assert cidr_prefixes(whole) == []
    v6 = CidrPeer(ipaddress.ip_network("fd00::/62"), (ipaddress.ip_network("fd00::/64"),
                                                      ipaddress.ip_network("fd00:0:0:3::/64")))
    assert cidr_prefixes(v6) == ["fd00:0:0:1::/64", "fd00:0:0:2::/64"]


def test_priorities_keep_their_order_and_their_values() -> None:
    r = PriorityRange()
    keys = [(1000, 1, "b", 0), (1000, 0, "a", 0), (10, 1, "z", 3), (1000, 1, "a", 0)]
    for k in keys:
        r.place(k)
    before = {k: r[k] for k in keys}
    assert sorted(keys, key=lambda k: -r[k]) == sorted(keys)
    assert not r.place((1000, 1, "a", 1))  # a gap: nobody moves
    assert {k: r[k] for k in keys} == before
    relayouts = sum(r.place((1000, 1, "a", i)) for i in range(2, 40))
    assert relayouts >= 1  # halving the same gap runs out: spread again, order kept
    everything = sorted([*keys, *((1000, 1, "a", i) for i in range(1, 40))])
    assert [r[k] for k in everything] == sorted((r[k] for k in everything), reverse=True)
    assert len({r[k] for k in everything}) == len(everything)


def test_zones_are_never_shared() -> None:
    z = Zones()
    assert z.of(42) == 42 | 0x8000  # never the gateway's iptables zone (42)
    assert z.of(42 + 0xFFFF) != z.of(42) and z.of(42 + 0xFFFF) == z.of(42 + 0xFFFF)
    assert z.of(0x8000) not in (0, 0x8000)
    vnis = (1, 0xFFFF, 0x10000, 0x1FFFE, 16_777_215, 65536 * 3)
    zones = {z.of(v) for v in vnis}
    assert len(zones) == 6 and all(z.of(v) != 1 + (v - 1) % 0xFFFF for v in vnis)
    assert all(0 < zone <= 0xFFFF for zone in zones)


def local(i: int) -> LocalPort:
    return LocalPort(VNI, f"0a:58:0a:00:00:{i:02x}", (f"10.0.0.{i}",), 10 + i)


def remote(i: int) -> RemoteEndpoint:
    return RemoteEndpoint(VNI, f"0a:58:0a:00:01:{i:02x}", (f"10.0.1.{i}",), "172.31.0.9")


def test_a_rule_costs_the_sum_of_its_sets_not_the_product() -> None:
    intent = Intent(tunnel_ofport=TUNNEL)
    for i in range(1, 21):
        intent.set_local(f"{NET}/c{i}/eth0", local(i), want_ops=True)
        intent.policy.set_peers({f"{NET}/c{i}/eth0": PeerInfo(NET, local(i).ips, {"app": "db"})})
    intent.set_remote({f"{NET}/r{i}/eth0": remote(i) for i in range(1, 31)}, want_ops=True)
    intent.policy.set_peers({f"{NET}/r{i}/eth0": PeerInfo(NET, remote(i).ips, {"app": "web"})
                             for i in range(1, 31)})
    before = len(intent.rules())
    rule = Rule(peers=(Selector((("app", "web"),)),),
                ports=(PortRange("TCP", 5432), PortRange("TCP", 8000, 8015)))
    intent.policy.set_policy(NET, "db", Policy(NET, "db", Selector((("app", "db"),)),
                                               ingress=(rule,), egress=None))
    in_ingress = [i for i in intent.rules() if i.table == INGRESS]
    # 20 subjects + 30 peers + 2 port rules (8000-8015 is one masked rule) + conj_id,
    # the conntrack verdicts (est, rel, inv) of the table and its default deny, neighbour
    # discovery (ICMPv6 133-136), and each subject's own default deny, IPv4 and IPv6 (its
    # counters say who was denied; IPv6 to a port without IPv6 is denied). IPv4 only: no IPv6
    # rule for a rule whose subjects have no IPv6.
    assert len(in_ingress) == 20 + 30 + 2 + 1 + 4 + 4 + 20 * 2
    naive = 20 * 30 * 17
    # Beside the table: per policed port its detours (IPv4 and IPv6) and its delivery.
    assert len(intent.rules()) - before < naive / 40
    # Each policed port: two detours (FORWARD, DELIVER) and its delivery once allowed.
    assert len(intent.policy.policed()) == 20


def test_policing_broadcast_costs_two_actions_per_policed_port_and_no_rule() -> None:
    """The flood's copy to a port whose ingress is policed goes through its rules: the
    network's replication rules stay as many, each policed port costs one more action in
    them (load reg1, resubmit instead of output), whatever the number of rules or peers."""
    from overlay.model import DELIVER, FORWARD

    def floods(intent: Intent) -> dict[int, int]:
        return {i.table: len(a) for i, a in intent.rules().items()
                if i.table in (FORWARD, DELIVER) and i.priority == 50}

    for policed_ports in (1, 5, 20):
        intent = Intent(tunnel_ofport=TUNNEL)
        for i in range(1, 21):
            intent.set_local(f"{NET}/c{i}/eth0", local(i), want_ops=True)
            app = "db" if i <= policed_ports else "free"
            intent.policy.set_peers({f"{NET}/c{i}/eth0": PeerInfo(NET, local(i).ips,
                                                                    {"app": app})})
        intent.set_remote({f"{NET}/r{i}/eth0": remote(i) for i in range(1, 31)}, want_ops=True)
        before, rules_before = floods(intent), len(intent.rules())
        intent.policy.set_policy(NET, "db", Policy(NET, "db", Selector((("app", "db"),)),
                                                   ingress=(Rule(),), egress=None))
        assert floods(intent) == {t: n + policed_ports for t, n in before.items()}
        rules_after = len(intent.rules())
        # The rest: the tables' shared rules (17) and the network's commits (4), then per
        # policed port its egress detour and allowance, its ingress detours (tables 20 and
        # 30, IPv4 and IPv6) and default denies, its delivery, and its rule (any peer): 10.
        assert rules_after - rules_before == 17 + 4 + 10 * policed_ports
        intent.policy.set_policy(NET, "db", None)
        assert floods(intent) == before and len(intent.rules()) == rules_before


def local6(i: int) -> LocalPort:
    """A dual-stack local port."""
    return LocalPort(VNI, f"0a:58:0a:00:00:{i:02x}", (f"10.0.0.{i}", f"fd00::{i:x}"), 10 + i)


def remote6(i: int) -> RemoteEndpoint:
    return RemoteEndpoint(VNI, f"0a:58:0a:00:01:{i:02x}", (f"10.0.1.{i}", f"fd00::1:{i:x}"),
                          "172.31.0.9")


labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
selectors = st.builds(
    Selector,
    st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=1,
             unique_by=lambda kv: kv[0]).map(tuple),
    st.lists(st.builds(Requirement, st.sampled_from(KEYS),
                       st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")),
                       st.just(())), max_size=1).map(
        lambda reqs: tuple(Requirement(r.key, r.operator, ("a",) if r.operator in
                                       ("In", "NotIn") else ()) for r in reqs)))
cidrs = st.sampled_from([CidrPeer(ipaddress.ip_network("10.0.1.0/24")),
                         CidrPeer(ipaddress.ip_network("10.0.0.0/16"),
                                  (ipaddress.ip_network("10.0.1.0/30"),)),
                         CidrPeer(ipaddress.ip_network("192.168.0.0/24")),
                         CidrPeer(ipaddress.ip_network("fd00::1:0/112")),
                         CidrPeer(ipaddress.ip_network("fd00::/64"),
                                  (ipaddress.ip_network("fd00::1:0/126"),)),
                         CidrPeer(ipaddress.ip_network("2001:db8::/32")),
                         CidrPeer(ipaddress.ip_network("fe80::/10"))])
ports = st.builds(PortRange, st.sampled_from(("TCP", "UDP")),
                  st.sampled_from((None, 80, 443)), st.just(None)) | \
    st.just(PortRange("TCP", 80, 90))
rules = st.builds(Rule, st.lists(selectors | cidrs, max_size=2).map(tuple),
                  st.lists(ports, max_size=2).map(tuple),
                  st.sampled_from(("allow", "allow", "drop", "reject")))
policies = st.lists(st.builds(
    Policy, st.just(NET), st.sampled_from(("p1", "p2", "p3")), selectors,
    st.none() | st.lists(rules, max_size=3).map(tuple),
    st.none() | st.lists(rules, max_size=3).map(tuple),
    st.sampled_from((10, 1000))), max_size=3, unique_by=lambda p: p.name)
packets = st.tuples(st.sampled_from((6, 17, 1)), st.sampled_from((80, 85, 443, 22)))
# Which addresses a packet is between: IPv4, IPv6 (the ends' own), or IPv6 link-local (the
# ends' MACs' EUI-64 addresses, which no record names: no selector selects them).
FAMILIES = ("ipv4", "ipv6", "link-local")
OUTSIDE = {"ipv4": "192.168.0.7", "ipv6": "2001:db8::7", "link-local": "fe80::99"}


def policed(pols: list[Policy], lab: dict[str, str]) -> bool:
    """Does some policy select this port (then both its directions go through conntrack)?"""
    return any(p.selector.matches(lab) and (p.ingress, p.egress) != (None, None) for p in pols)


def denied(action: str) -> bool:
    return action != "allow"


def ends(kind: str, me: LocalPort, peer: RemoteEndpoint) -> tuple[str, str]:
    """(my address, the peer's) for a packet of this kind."""
    if kind == "link-local":
        return link_local(me.mac), link_local(peer.mac)
    index = 0 if kind == "ipv4" else 1
    return me.ips[index], peer.ips[index]


def l3(kind: str, src: str, dst: str, proto: int, port: int) -> dict[str, str | int]:
    """The packet's fields from eth_type on (ICMP is ICMPv6's echo over IPv6)."""
    if kind == "ipv4":
        head: dict[str, str | int] = {"eth_type": ETH_IP, "ipv4_src": src, "ipv4_dst": dst}
    else:
        head = {"eth_type": ETH_IPV6, "ipv6_src": src, "ipv6_dst": dst}
        proto = 58 if proto == 1 else proto
    return {**head, "ip_proto": proto, **({"tcp_dst": port} if proto == 6 else
                                          {"tp_dst": port} if proto == 17 else
                                          {"icmp_type": 128 if kind != "ipv4" else 8})}


@settings(max_examples=300, deadline=None)
@given(locals_=st.lists(labels, min_size=2, max_size=3),
       remotes=st.lists(labels, min_size=1, max_size=3), pols=policies, packet=packets,
       order=st.booleans(), kind=st.sampled_from(FAMILIES))
def test_compiled_rules_decide_as_the_reference_evaluator(
        locals_: list[dict[str, str]], remotes: list[dict[str, str]], pols: list[Policy],
        packet: tuple[int, int], order: bool, kind: str) -> None:
    """Dual-stack ports, packets of either family (and IPv6 link-local): the switch decides
    as the evaluator, which knows the peer's labels when the peer's address is in its record."""
    intent = Intent(tunnel_ofport=TUNNEL)
    infos = {f"{NET}/c{i}/eth0": PeerInfo(NET, local6(i).ips, lab)
             for i, lab in enumerate(locals_, 1)}
    infos.update({f"{NET}/r{i}/eth0": PeerInfo(NET, remote6(i).ips, lab)
                  for i, lab in enumerate(remotes, 1)})
    steps = [lambda: [intent.set_local(f"{NET}/c{i}/eth0", local6(i), want_ops=True)
                      for i in range(1, len(locals_) + 1)],
             lambda: intent.policy.set_peers(infos),
             lambda: [intent.policy.set_policy(NET, p.name, p) for p in pols]]
    for step in (steps if order else reversed(steps)):  # the deltas, in either order
        step()
    intent.set_remote({f"{NET}/r{i}/eth0": remote6(i) for i in range(1, len(remotes) + 1)},
                      want_ops=True)
    rules = intent.rules()
    proto, port = packet
    for i, lab in enumerate(locals_, 1):
        me = local6(i)
        # Egress to each remote endpoint, and to an address outside the network.
        for j, peer_labels in [*enumerate(remotes, 1), (1, None)]:
            mine, theirs = ends(kind, me, remote6(j))
            dst = theirs if peer_labels is not None else OUTSIDE[kind]
            known = peer_labels if kind != "link-local" else None
            expect = verdict(pols, direction="egress", subject=lab, peer_labels=known,
                             peer_ip=ipaddress.ip_address(dst), protocol=proto, port=port)
            got = walk(rules, {"in_port": me.ofport, "eth_src": me.mac,
                               "eth_dst": remote6(j).mac, **l3(kind, mine, dst, proto, port)})
            assert (got.outputs == [TUNNEL]) == (not denied(expect.action)), (expect, got)
            assert got.to_controller == (expect.action == "reject"), (expect, got)
            assert (EGRESS in got.tables) == policed(pols, lab)
        # Ingress from each remote endpoint through the tunnel, and from outside.
        for j, peer_labels in [*enumerate(remotes, 1), (1, None)]:
            mine, theirs = ends(kind, me, remote6(j))
            src = theirs if peer_labels is not None else OUTSIDE[kind]
            known = peer_labels if kind != "link-local" else None
            expect = verdict(pols, direction="ingress", subject=lab, peer_labels=known,
                             peer_ip=ipaddress.ip_address(src), protocol=proto, port=port)
            got = walk(rules, {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI,
                               "eth_src": remote6(j).mac, "eth_dst": me.mac,
                               **l3(kind, src, mine, proto, port)})
            assert (got.outputs == [me.ofport]) == (not denied(expect.action)), (expect, got)
            assert got.to_controller == (expect.action == "reject"), (expect, got)
            assert (INGRESS in got.tables) == policed(pols, lab)
    broadcasts_decide_as_the_evaluator(rules, locals_, remotes, pols, packet, kind)


BROADCAST = {"ipv4": ("ff:ff:ff:ff:ff:ff", "255.255.255.255"),
             "ipv6": ("33:33:00:00:00:01", "ff02::1"),
             "link-local": ("33:33:00:00:00:01", "ff02::1")}


def broadcasts_decide_as_the_evaluator(rules: dict[Identity, Actions],
                                       locals_: list[dict[str, str]],
                                       remotes: list[dict[str, str]], pols: list[Policy],
                                       packet: tuple[int, int], kind: str) -> None:
    """A broadcast (IPv6: all-nodes multicast) reaches each local port as the evaluator decides
    its ingress from the sender; one a local port sends leaves as its egress decides (to the
    group's address, no endpoint's), then reaches each other local port as above."""
    proto, port = packet
    mac, group = BROADCAST[kind]
    for j, peer_labels in enumerate(remotes, 1):
        src = ends(kind, local6(1), remote6(j))[1]
        got = walk(rules, {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI,
                           "eth_src": remote6(j).mac, "eth_dst": mac,
                           **l3(kind, src, group, proto, port)})
        for i, lab in enumerate(locals_, 1):
            expect = verdict(pols, direction="ingress", subject=lab,
                             peer_labels=peer_labels if kind != "link-local" else None,
                             peer_ip=ipaddress.ip_address(src), protocol=proto, port=port)
            assert (local6(i).ofport in got.outputs) == (not denied(expect.action)), (i, expect)
    for k, sender in enumerate(locals_, 1):
        src = ends(kind, local6(k), remote6(1))[0]
        got = walk(rules, {"in_port": local6(k).ofport, "eth_src": local6(k).mac,
                           "eth_dst": mac, **l3(kind, src, group, proto, port)})
        out = verdict(pols, direction="egress", subject=sender, peer_labels=None,
                      peer_ip=ipaddress.ip_address(group), protocol=proto, port=port)
        assert (TUNNEL in got.outputs) == (not denied(out.action)), out
        for i, lab in enumerate(locals_, 1):
            if i == k:
                continue  # OVS never sends a packet back out of the port it came in on
            expect = verdict(pols, direction="ingress", subject=lab,
                             peer_labels=sender if kind != "link-local" else None,
                             peer_ip=ipaddress.ip_address(src), protocol=proto, port=port)
            wanted = not denied(out.action) and not denied(expect.action)
            assert (local6(i).ofport in got.outputs) == wanted, (k, i, out, expect)


@settings(max_examples=100, deadline=None)
@given(locals_=st.lists(labels, min_size=1, max_size=3), pols=policies,
       relabel=st.lists(labels, min_size=3, max_size=3))
def test_deltas_leave_the_table_a_fresh_compile_builds_and_undo_leaves_none(
        locals_: list[dict[str, str]], pols: list[Policy], relabel: list[dict[str, str]]) -> None:
    def fresh(lab: list[dict[str, str]], with_policies: bool) -> Intent:
        intent = Intent(tunnel_ofport=TUNNEL)
        if with_policies:
            for p in pols:
                intent.policy.set_policy(NET, p.name, p)
        intent.policy.set_peers({f"{NET}/c{i}/eth0": PeerInfo(NET, local(i).ips, la)
                                 for i, la in enumerate(lab, 1)})
        for i in range(1, len(lab) + 1):
            intent.set_local(f"{NET}/c{i}/eth0", local(i), want_ops=True)
        return intent

    live = fresh(locals_, True)
    moved = relabel[:len(locals_)]
    live.policy.set_peers({f"{NET}/c{i}/eth0": PeerInfo(NET, local(i).ips, la)
                           for i, la in enumerate(moved, 1)})  # labels changed
    assert live.rules() == fresh(moved, True).rules()
    for p in pols:
        live.policy.set_policy(NET, p.name, None)
    assert live.rules() == fresh(moved, False).rules()
    assert not live.policy.policed()


def test_a_port_added_with_its_labels_is_policed_by_its_first_rules() -> None:
    """The CNI ADD hands the endpoint's labels with its port: no window in which a selected
    container is open until its record comes back through the etcd watch."""
    from typing import Any, cast

    from overlay.dataplane.dataplane import Dataplane
    from overlay.ovs.testing import FakeOfctl

    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=TUNNEL)
    dp.update_policies({(NET, "db"): Policy(NET, "db", Selector((("app", "db"),)),
                                            ingress=(), egress=None)})
    dp.update_remote({f"{NET}/r1/eth0": remote(1)})  # the tunnel admits its host
    dp.install_endpoint(f"{NET}/c1/eth0", local(1), {"app": "db"})
    rules = dp.wanted()
    got = walk(rules, {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI,
                       "eth_dst": local(1).mac, "eth_type": ETH_IP, "ipv4_src": "10.0.1.1",
                       "ipv4_dst": local(1).ips[0], "ip_proto": 1})
    assert INGRESS in got.tables and got.outputs == []  # deny-all ingress, from the start
    dp.install_endpoint(f"{NET}/c2/eth0", local(2))  # no labels given: not selected
    assert walk(dp.wanted(), {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI,
                              "eth_dst": local(2).mac, "eth_type": ETH_IP,
                              "ipv4_src": "10.0.1.1", "ipv4_dst": local(2).ips[0],
                              "ip_proto": 1}).outputs == [local(2).ofport]


def test_edits_back_and_forth_sent_as_deltas_leave_the_switch_deciding_as_the_evaluator() -> None:
    """e2e test_policy's live edit (a rule's peer edited to app=other and back), priorities
    moved, rules added and dropped, policies deleted, peers gone and back, thousands of times
    over: the operations, applied in order to a switch that starts empty, leave exactly the
    model's table (no add cancelled by a later delete of the same identity), and that table
    decides as the reference evaluator."""
    import random

    from overlay.ovs.flow import ADD, DELETE, Op

    rng = random.Random(20)
    intent = Intent(tunnel_ofport=TUNNEL)
    switch = dict(intent.rules())

    def send(ops: list[Op]) -> None:
        for op in ops:
            if op.kind == DELETE:
                switch.pop(op.identity, None)
            elif op.kind == ADD or op.identity in switch:  # modify_strict adds nothing
                switch[op.identity] = op.actions

    def sel(app: str) -> Selector:
        return Selector((("app", app),))

    peers = {1: {"app": "a"}, 2: {"app": "b"}}
    present = {1: True, 2: True}
    send(intent.set_local(f"{NET}/c1/eth0", local(1), want_ops=True))
    send(intent.policy.set_peers({f"{NET}/c1/eth0": PeerInfo(NET, local(1).ips, {"app": "db"})}))
    send(intent.set_remote({f"{NET}/r{j}/eth0": remote(j) for j in peers}, want_ops=True))
    send(intent.policy.set_peers({f"{NET}/r{j}/eth0": PeerInfo(NET, remote(j).ips, labels)
                                  for j, labels in peers.items()}))
    pols: dict[str, Policy] = {}
    for _ in range(500):
        if rng.random() < 0.2:
            j = rng.choice((1, 2))
            present[j] = rng.random() < 0.6
            send(intent.policy.set_peers({f"{NET}/r{j}/eth0": PeerInfo(NET, remote(j).ips, peers[j])
                                          if present[j] else None}))
        name = rng.choice(("db", "p2", "p3"))
        rules = tuple(Rule(peers=(sel(rng.choice("ab")),) if rng.random() < 0.8 else (),
                           ports=(PortRange("TCP", rng.choice((22, 80))),)
                           if rng.random() < 0.7 else (),
                           action=rng.choice(("allow", "allow", "drop")))
                      for _ in range(rng.randint(0, 3)))
        policy = None if rng.random() < 0.2 else Policy(
            NET, name, sel("db"), ingress=rules, egress=None, priority=rng.choice((10, 1000)))
        if policy is None:
            pols.pop(name, None)
        else:
            pols[name] = policy
        send(intent.policy.set_policy(NET, name, policy))
        assert switch == intent.rules()
        for j, peer_labels in peers.items():
            for port in (22, 80):
                expect = verdict(list(pols.values()), direction="ingress", subject={"app": "db"},
                                 peer_labels=peer_labels if present[j] else None,
                                 peer_ip=ipaddress.ip_address(remote(j).ips[0]), protocol=6,
                                 port=port)
                got = walk(switch, {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI,
                                    "eth_src": remote(j).mac, "eth_dst": local(1).mac,
                                    "eth_type": ETH_IP, "ipv4_src": remote(j).ips[0],
                                    "ipv4_dst": local(1).ips[0], "ip_proto": 6, "tcp_dst": port})
                assert (got.outputs == [local(1).ofport]) == (expect.action == "allow"), expect


def test_neighbour_discovery_passes_a_policed_port_and_the_rest_of_ipv6_is_judged() -> None:
    """A port denied everything still answers and asks neighbour discovery (or its IPv6 would
    die altogether), while ICMPv6 echo is denied; a port with no IPv6 address that a policy
    polices for ingress gets no IPv6 around it (no rule can allow any: denied)."""
    intent = Intent(tunnel_ofport=TUNNEL)
    me, v4_only, peer = local6(1), local(2), remote6(1)
    intent.set_local(f"{NET}/c1/eth0", me, want_ops=True)
    intent.set_local(f"{NET}/c2/eth0", v4_only, want_ops=True)
    intent.set_remote({f"{NET}/r1/eth0": peer}, want_ops=True)
    intent.policy.set_peers({f"{NET}/c1/eth0": PeerInfo(NET, me.ips, {"app": "db"}),
                             f"{NET}/c2/eth0": PeerInfo(NET, v4_only.ips, {"app": "db"})})
    intent.policy.set_policy(NET, "deny", Policy(NET, "deny", Selector((("app", "db"),)),
                                                 ingress=(), egress=()))
    rules = intent.rules()
    tunnel = {"in_port": TUNNEL, "tun_src": "172.31.0.9", "tun_id": VNI, "eth_src": peer.mac,
              "eth_type": ETH_IPV6, "ip_proto": 58, "ipv6_src": peer.ips[1]}
    for kind in (135, 136):  # unicast solicitation (reachability) and advertisement
        got = walk(rules, {**tunnel, "eth_dst": me.mac, "ipv6_dst": me.ips[1], "icmp_type": kind})
        assert got.outputs == [me.ofport] and INGRESS in got.tables, got
    echo = {**tunnel, "eth_dst": me.mac, "ipv6_dst": me.ips[1], "icmp_type": 128}
    assert walk(rules, echo).outputs == []
    assert walk(rules, {**echo, "eth_dst": v4_only.mac, "ipv6_dst": "fe80::1"}).outputs == []
    # Out: its solicitations keep table 0's own rule (no detour), a router solicitation from
    # its link-local address passes the egress table, an echo does not.
    sent = {"in_port": me.ofport, "eth_src": me.mac, "eth_type": ETH_IPV6, "ip_proto": 58}
    ns = walk(rules, {**sent, "eth_dst": peer.mac, "ipv6_src": me.ips[1], "icmp_type": 135,
                      "icmp_code": 0, "nd_sll": me.mac, "ipv6_dst": peer.ips[1]})
    assert ns.outputs == [TUNNEL] and EGRESS not in ns.tables
    rs = walk(rules, {**sent, "eth_dst": peer.mac, "ipv6_src": link_local(me.mac),
                      "ipv6_dst": peer.ips[1], "icmp_type": 133})
    assert rs.outputs == [TUNNEL] and EGRESS in rs.tables
    assert walk(rules, {**sent, "eth_dst": peer.mac, "ipv6_src": me.ips[1],
                        "ipv6_dst": peer.ips[1], "icmp_type": 128}).outputs == []
