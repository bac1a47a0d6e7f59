"""The reconciler turns keyed etcd changes into remote endpoint updates, key by key."""

from __future__ import annotations

import json
from typing import Any, cast

from overlay.agent.reconciler import Reconciler
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort, RemoteEndpoint
from overlay.ovs.flowtext import actions_text
from overlay.ovs.testing import FakeOfctl
from overlay.store import records as r
from overlay.store.stream import Change


def ep(host: str, ip: str, mac: str, vni: int = 42, vtep: str = "") -> Change:
    rec = r.EndpointRecord(network="n", container_id=f"c-{ip}", ifname="eth0", host=host,
                           vni=vni, ips=[f"{ip}/24"], mac=mac, port="ovlx", netns="/x",
                           vtep=vtep)
    return Change(rec.key, rec.to_json().encode(), 1)


def net(name: str = "n", vni: int = 42, subnet: str = "10.0.0.0/16", created: int = 1) -> Change:
    value = r.NetworkRecord(name, vni, subnet).to_json().encode()
    return Change(r.network_key(name), value, created, created)


def host(name: str, vtep: str | None) -> Change:
    value = None if vtep is None else r.HostRecord(name, vtep, "netdev").to_json().encode()
    return Change(r.host_key(name), value, 1)


def setup() -> tuple[Reconciler, Dataplane, list[set[str]]]:
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    dp.install_endpoint("n/mine/eth0", LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5))
    primed: list[set[str]] = []
    rec = Reconciler(host="h0", dataplane=dp, on_new_vteps=primed.append)
    rec.on_networks([net()])
    return rec, dp, primed


def remote(dp: Dataplane) -> set[RemoteEndpoint]:
    return set(dp.state().remote.values())


def test_remote_endpoints_of_live_hosts_only() -> None:
    rec, dp, primed = setup()
    rec.on_hosts([host("h0", "172.31.0.1"), host("h1", "172.31.0.2")])
    rec.on_endpoints([ep("h0", "10.0.0.1", "02:00:00:00:00:01"),
                      ep("h1", "10.0.0.2", "02:00:00:00:00:02"),
                      ep("h2", "10.0.0.3", "02:00:00:00:00:03")])  # h2 has no live host key
    assert remote(dp) == {RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2")}
    assert primed == [{"172.31.0.2"}]
    assert [x.container_id for x in rec.own_records()] == ["c-10.0.0.1"]


def test_a_host_that_registers_later_brings_its_endpoints_and_loses_them_with_its_lease() -> None:
    rec, dp, _ = setup()
    rec.on_endpoints([ep("h2", "10.0.0.3", "02:00:00:00:00:03")])
    assert remote(dp) == set()
    rec.on_hosts([host("h2", "172.31.0.3")])
    assert remote(dp) == {RemoteEndpoint(42, "02:00:00:00:00:03", ("10.0.0.3",), "172.31.0.3")}
    rec.on_hosts([host("h2", "172.31.0.9")])  # its VTEP moved
    assert {e.vtep for e in remote(dp)} == {"172.31.0.9"}
    rec.on_hosts([host("h2", None)])  # lease expired
    assert remote(dp) == set()


def test_every_event_of_one_batch_counts() -> None:
    # A DeleteRange: many deletes with one revision, delivered together.
    rec, dp, _ = setup()
    rec.on_hosts([host("h1", "172.31.0.2")])
    puts = [ep("h1", f"10.0.1.{i}", f"02:00:00:00:01:{i:02x}") for i in range(1, 60)]
    rec.on_endpoints(puts)
    assert len(remote(dp)) == 59
    rec.on_endpoints([Change(c.key, None, 7) for c in puts])
    assert remote(dp) == set()


def test_forgetting_a_network_removes_its_endpoints() -> None:
    rec, dp, _ = setup()
    rec.on_hosts([host("h1", "172.31.0.2")])
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02")])
    rec.forget_network("n")
    assert remote(dp) == set() and rec.remote_count() == 0


def test_malformed_records_are_skipped() -> None:
    rec, dp, _ = setup()
    rec.on_hosts([host("h1", "172.31.0.2"), Change(r.HOSTS + "broken", b"[]", 1)])
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02"),
                      Change(r.ENDPOINTS + "n/bad/eth0", b"{not json", 1)])
    assert len(remote(dp)) == 1


def test_hostile_records_never_reach_the_flow_table() -> None:
    rec, dp, _ = setup()
    changes = [ep("h1", "10.0.0.2", "02:00:00:00:00:02")]
    for i, bad in enumerate([
        {"vni": "42"}, {"vni": 0}, {"mac": "02:00:00:00:00:03,output:1"},
        {"mac": "02:00:00:00:00:03\ntable=0,actions=NORMAL"}, {"ips": ["10.0.0.9,in_port=1"]},
    ]):
        good = ep("h1", f"10.0.0.{10 + i}", "02:00:00:00:00:03")
        assert good.value is not None
        changes.append(Change(good.key, json.dumps({**json.loads(good.value), **bad}).encode(), 1))
    rec.on_hosts([host("h1", "172.31.0.2"),
                  Change(r.HOSTS + "h2", json.dumps({"host": "h2", "vtep": "1.2.3.4,output:9",
                                                     "datapath": "netdev"}).encode(), 1)])
    rec.on_endpoints(changes)
    assert [e.mac for e in remote(dp)] == ["02:00:00:00:00:02"]


def test_a_malformed_update_removes_the_previous_good_record() -> None:
    rec, dp, _ = setup()
    rec.on_hosts([host("h1", "172.31.0.2")])
    good = ep("h1", "10.0.0.2", "02:00:00:00:00:02")
    rec.on_endpoints([good])
    rec.on_endpoints([Change(good.key, b"garbage", 2)])
    assert remote(dp) == set()


class Clock:
    """Stands in for threading.Timer: the test decides when the grace period ends."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Any, list[bool]]] = []

    def schedule(self, delay: float, call: Any) -> Any:
        cancelled = [False]
        self.pending.append((delay, call, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True
        return Handle()

    def expire_all(self) -> None:
        due, self.pending = self.pending, []
        for _, call, cancelled in due:
            if not cancelled[0]:
                call()


def with_grace(clock: Clock, switch: FakeOfctl | None = None) -> tuple[Reconciler, Dataplane]:
    dp = Dataplane(ofctl=cast(Any, switch or FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    dp.install_endpoint("n/mine/eth0", LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5))
    rec = Reconciler(host="h0", dataplane=dp, host_grace=45, schedule=clock.schedule)
    rec.on_networks([net()])
    rec.on_hosts([host("h1", "172.31.0.2")])
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02")])
    return rec, dp


def test_a_lapsed_host_keeps_its_flows_for_the_grace_period_then_loses_them() -> None:
    clock = Clock()
    rec, dp = with_grace(clock)
    before = remote(dp)
    rec.on_hosts([host("h1", None)])  # its agent restarts more slowly than its lease TTL
    assert remote(dp) == before and [d for d, _, _ in clock.pending] == [45]
    assert rec.vteps == {"172.31.0.2"}  # still flooded to
    rec.on_hosts([host("h1", None)])  # a resync reporting the same absence: one expiry only
    assert len(clock.pending) == 1
    clock.expire_all()
    assert remote(dp) == set() and rec.vteps == set()


def test_a_host_back_within_the_grace_period_changes_nothing() -> None:
    clock, switch = Clock(), FakeOfctl()
    rec, dp = with_grace(clock, switch)
    before, table, bundles = dict(dp.state().remote), dict(switch.table), len(switch.bundles)
    assert any("172.31.0.2" in actions_text(actions) for actions in table.values()), table
    rec.on_hosts([host("h1", None)])
    rec.on_hosts([host("h1", "172.31.0.2")])  # registered again, same VTEP
    clock.expire_all()  # the cancelled expiry must not fire
    assert dp.state().remote == before
    assert switch.table == table and len(switch.bundles) == bundles, "no flow was touched"
    # back with another VTEP: its endpoints follow at once
    rec.on_hosts([host("h1", None)])
    rec.on_hosts([host("h1", "172.31.0.7")])
    assert {e.vtep for e in remote(dp)} == {"172.31.0.7"}
    clock.expire_all()
    assert {e.vtep for e in remote(dp)} == {"172.31.0.7"}


def test_a_host_that_leaves_again_after_coming_back_gets_a_fresh_grace_period() -> None:
    clock = Clock()
    rec, dp = with_grace(clock)
    rec.on_hosts([host("h1", None)])
    first = clock.pending[0][1]
    rec.on_hosts([host("h1", "172.31.0.2")])
    rec.on_hosts([host("h1", None)])
    first()  # the first, cancelled expiry firing late must not cut the second grace short
    assert {e.vtep for e in remote(dp)} == {"172.31.0.2"}
    clock.expire_all()
    assert remote(dp) == set()


def starting_agent(clock: Clock, remembered: dict[str, str] | None = None
                   ) -> tuple[Reconciler, Dataplane]:
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    dp.install_endpoint("n/mine/eth0", LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5))
    rec = Reconciler(host="h0", dataplane=dp, host_grace=45, schedule=clock.schedule,
                     remembered_vteps=remembered)
    rec.on_networks([net()])
    return rec, dp


def test_an_agent_starting_while_a_peer_is_away_uses_the_vtep_it_learnt_before() -> None:
    # This agent's first snapshot has h1's endpoints but not h1's key: h1's agent is
    # restarting and its lease lapsed. Forward to the VTEP h1's host record had in this
    # agent's previous run (agent/peers.py), for the grace.
    clock = Clock()
    rec, dp = starting_agent(clock, {"h1": "172.31.0.2"})
    rec.on_hosts([])
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02", vtep="172.31.0.66"),
                      ep("h1", "10.0.0.3", "02:00:00:00:00:03", vtep="172.31.0.66")])
    assert {(e.mac, e.vtep) for e in remote(dp)} == {("02:00:00:00:00:02", "172.31.0.2"),
                                                     ("02:00:00:00:00:03", "172.31.0.2")}
    assert len(clock.pending) == 1
    rec.on_hosts([host("h1", "172.31.0.2")])  # its agent is back
    clock.expire_all()
    assert len(remote(dp)) == 2


def test_a_vtep_named_by_an_endpoint_record_is_never_used() -> None:
    # The reproduced attack: a record naming a host that does not exist, with a VTEP of its
    # choosing. Without a host record (or one learnt before) it reaches no flow at all.
    clock = Clock()
    rec, dp = starting_agent(clock)
    rec.on_endpoints([ep("ghost", "10.0.0.2", "02:00:00:00:00:02", vtep="172.31.0.99")])
    assert remote(dp) == set() and clock.pending == []


def test_a_remembered_vtep_only_lasts_the_grace_period() -> None:
    clock = Clock()
    rec, dp = starting_agent(clock, {"h1": "172.31.0.2"})
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02"),
                      ep("h2", "10.0.0.4", "02:00:00:00:00:04")])  # h2: never known
    assert {e.vtep for e in remote(dp)} == {"172.31.0.2"}
    clock.expire_all()  # h1 never came back: a dead host's leftover records
    assert remote(dp) == set()
    rec.on_endpoints([ep("h1", "10.0.0.5", "02:00:00:00:00:05")])
    assert remote(dp) == set() and clock.pending == [], "adopted once, not again and again"


def test_a_remembered_vtep_never_overrides_a_host_key_this_agent_has_seen() -> None:
    clock = Clock()
    rec, dp = starting_agent(clock, {"h1": "172.31.0.2"})
    rec.on_hosts([host("h1", "172.31.0.9")])
    rec.on_endpoints([ep("h1", "10.0.0.2", "02:00:00:00:00:02", vtep="172.31.0.2")])
    assert {e.vtep for e in remote(dp)} == {"172.31.0.9"} and clock.pending == []
