"""Records from etcd are verified before they become flows, and claims on one address or MAC
are settled by creation revision, the same on every host (overlay/agent/verify.py, claims.py)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from overlay.agent import peers
from overlay.agent.reconciler import Reconciler
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort, RemoteEndpoint
from overlay.ovs.testing import FakeOfctl
from overlay.store import records as r
from overlay.store.stream import Change

NET, VNI, SUBNET = "n", 42, "10.0.0.0/24"


def record(cid: str, host: str, ip: str, mac: str, **over: Any) -> dict[str, Any]:
    rec = r.EndpointRecord(network=NET, container_id=cid, ifname="eth0", host=host, vni=VNI,
                           ips=[f"{ip}/24"], mac=mac, port="ovlx", netns="/x")
    return {**json.loads(rec.to_json()), **over}


def put(obj: Any, created: int, key: str | None = None) -> Change:
    if key is None:
        key = r.endpoint_key(obj["network"], obj["container_id"], obj["ifname"])
    value = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return Change(key, value, created, created)


def delete(cid: str) -> Change:
    return Change(r.endpoint_key(NET, cid, "eth0"), None, 99)


def host(name: str, vtep: str) -> Change:
    return Change(r.host_key(name), r.HostRecord(name, vtep, "netdev").to_json().encode(), 1, 1)


def network(name: str = NET, vni: int = VNI, subnet: str = SUBNET, created: int = 1) -> Change:
    return Change(r.network_key(name), r.NetworkRecord(name, vni, subnet).to_json().encode(),
                  created, created)


class Counts:
    def __init__(self) -> None:
        self.rejected: list[tuple[str, str]] = []
        self.conflicts = 0

    def reject(self, kind: str, reason: str) -> None:
        self.rejected.append((kind, reason))

    def conflict(self) -> None:
        self.conflicts += 1


def setup() -> tuple[Reconciler, Dataplane, Counts]:
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    dp.install_endpoint("n/mine/eth0", LocalPort(VNI, "02:00:00:00:00:01", ("10.0.0.1",), 5))
    counts = Counts()
    rec = Reconciler(host="h0", dataplane=dp, on_reject=counts.reject,
                     on_conflict=counts.conflict)
    rec.on_networks([network()])
    rec.on_hosts([host("h0", "172.31.0.1"), host("h1", "172.31.0.2"), host("h2", "172.31.0.3")])
    return rec, dp, counts


def macs(dp: Dataplane) -> dict[str, RemoteEndpoint]:
    return {e.mac: e for e in dp.state().remote.values()}


GOOD = record("good", "h1", "10.0.0.2", "02:00:00:00:00:02")


@pytest.mark.parametrize(("change", "reason"), [
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", container_id="other"), 5,
         r.endpoint_key(NET, "c", "eth0")), "key_mismatch"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", network="m"), 5,
         r.endpoint_key(NET, "c", "eth0")), "key_mismatch"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", ifname="eth1"), 5,
         r.endpoint_key(NET, "c", "eth0")), "key_mismatch"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", vni=43), 5), "vni"),
    (put(record("c", "h1", "10.0.1.3", "02:00:00:00:00:03"), 5), "subnet"),
    (put(record("c", "h1", "10.0.0.3", "ff:ff:ff:ff:ff:ff"), 5), "mac"),
    (put(record("c", "h1", "10.0.0.3", "01:00:5e:00:00:01"), 5), "mac"),
    (put(record("c", "h1", "10.0.0.3", "00:00:00:00:00:00"), 5), "mac"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03",
                ips=[f"10.0.0.{i}/24" for i in range(3, 20)]), 5), "too_many_addresses"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", pad="x" * 20000), 5), "too_large"),
    (put(b"[" * 5000 + b"]" * 5000, 5, r.endpoint_key(NET, "c", "eth0")), "malformed"),
    (put(b"{\"a\":" * 2500 + b"1" + b"}" * 2500, 5, r.endpoint_key(NET, "c", "eth0")),
     "malformed"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", ips=["10.0.0.3/²"]), 5), "address"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", labels={"app": "we b"}), 5),
     "labels"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", labels={"/app": "x"}), 5), "labels"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", labels=["app"]), 5), "labels"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03", labels={"app": 1}), 5), "labels"),
    (put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03",
                labels={f"k{i}": "v" for i in range(65)}), 5), "labels"),
])
def test_a_bad_record_is_skipped_alone_and_counted(change: Change, reason: str) -> None:
    rec, dp, counts = setup()
    rec.on_endpoints([put(GOOD, 2), change, put(record("ok2", "h2", "10.0.0.4",
                                                       "02:00:00:00:00:04"), 6)])
    assert set(macs(dp)) == {"02:00:00:00:00:02", "02:00:00:00:00:04"}
    assert counts.rejected == [("endpoint", reason)]
    assert any(change.key in p and reason in p for p in rec.problems())


def test_forwarding_uses_the_host_record_vtep_never_the_endpoint_record() -> None:
    rec, dp, _ = setup()
    rec.on_endpoints([put(record("c", "h1", "10.0.0.3", "02:00:00:00:00:03",
                                 vtep="172.31.0.99"), 5),
                      put(record("x", "nobody", "10.0.0.9", "02:00:00:00:00:09",
                                 vtep="172.31.0.99"), 6)])
    assert {e.vtep for e in macs(dp).values()} == {"172.31.0.2"}


def test_bad_host_and_network_records_are_counted_and_change_nothing() -> None:
    rec, dp, counts = setup()
    rec.on_endpoints([put(GOOD, 2)])
    rec.on_hosts([Change(r.host_key("h3"), json.dumps({"host": "h1", "vtep": "172.31.0.66"})
                         .encode(), 3, 3),
                  Change(r.host_key("h4"), b"[" * 10000, 3, 3)])
    rec.on_networks([Change(r.network_key(NET), json.dumps(
        {"name": "other", "vni": 7, "subnet": "10.9.0.0/24"}).encode(), 4, 1),
        Change(r.network_key("m"), b'{"name": "m", "vni": "7"}', 4, 4)])
    assert sorted(counts.rejected) == [("host", "key_mismatch"), ("host", "malformed"),
                                       ("network", "key_mismatch"), ("network", "vni")]
    assert {e.vtep for e in macs(dp).values()} == {"172.31.0.2"}


def test_an_endpoint_waits_for_its_network_record_then_is_checked_against_it() -> None:
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    counts = Counts()
    rec = Reconciler(host="h0", dataplane=dp, on_reject=counts.reject)
    rec.on_hosts([host("h1", "172.31.0.2")])
    rec.on_endpoints([put(GOOD, 2), put(record("far", "h1", "10.0.5.3",
                                               "02:00:00:00:00:03"), 3)])
    assert macs(dp) == {}, "no network record yet: nothing is believed"
    rec.on_networks([network()])
    assert set(macs(dp)) == {"02:00:00:00:00:02"} and counts.rejected == [("endpoint", "subnet")]


def test_a_network_that_takes_another_networks_vni_is_ignored() -> None:
    rec, dp, counts = setup()
    rec.on_networks([network("evil", VNI, "10.0.0.0/24", created=9)])
    rec.on_endpoints([put(GOOD, 2), put({**record("e", "h1", "10.0.0.5", "02:00:00:00:00:05"),
                                         "network": "evil"}, 3, r.endpoint_key("evil", "e",
                                                                               "eth0"))])
    assert set(macs(dp)) == {"02:00:00:00:00:02"} and counts.conflicts == 1
    assert any("network evil claims VNI 42" in p for p in rec.problems())


def test_the_first_created_claim_holds_an_address_and_the_next_takes_over() -> None:
    rec, dp, counts = setup()
    first = record("first", "h1", "10.0.0.7", "02:00:00:00:00:07")
    second = record("second", "h2", "10.0.0.7", "02:00:00:00:00:08")
    rec.on_endpoints([put(second, 20)])  # arrives first, but was created later
    rec.on_endpoints([put(first, 10)])
    assert set(macs(dp)) == {"02:00:00:00:00:07"} and counts.conflicts == 1
    problems = rec.problems()
    assert len(problems) == 1 and "10.0.0.7" in problems[0] and "first" in problems[0]
    rec.on_endpoints([put({**first, "mtu": 1400}, 10)])  # an update: no new conflict
    assert counts.conflicts == 1
    rec.on_endpoints([delete("first")])
    assert set(macs(dp)) == {"02:00:00:00:00:08"} and rec.problems() == []


def test_a_mac_claim_is_settled_the_same_way() -> None:
    rec, dp, counts = setup()
    rec.on_endpoints([put(record("a", "h1", "10.0.0.7", "02:00:00:00:00:07"), 10),
                      put(record("b", "h2", "10.0.0.8", "02:00:00:00:00:07"), 11)])
    assert [e.ips for e in macs(dp).values()] == [("10.0.0.7",)] and counts.conflicts == 1


def test_the_same_order_on_every_host_whatever_the_arrival_order() -> None:
    a = put(record("a", "h1", "10.0.0.7", "02:00:00:00:00:07"), 10)
    b = put(record("b", "h2", "10.0.0.7", "02:00:00:00:00:08"), 10)  # one transaction: key order
    outcomes = []
    for batch in ([a, b], [b, a]):
        rec, dp, _ = setup()
        rec.on_endpoints(batch)
        outcomes.append(set(macs(dp)))
    assert outcomes == [{"02:00:00:00:00:07"}] * 2


def test_a_local_endpoint_always_wins_on_its_host() -> None:
    rec, dp, counts = setup()
    remote_claim = record("thief", "h1", "10.0.0.1", "02:00:00:00:00:66")
    mine = record("mine", "h0", "10.0.0.1", "02:00:00:00:00:01")
    rec.on_endpoints([put(remote_claim, 3), put(mine, 50)])  # the thief's record is older
    assert macs(dp) == {} and counts.conflicts == 1
    rec.on_endpoints([delete("mine")])
    assert set(macs(dp)) == {"02:00:00:00:00:66"}


def test_a_claim_of_a_dead_host_does_not_hold_an_address() -> None:
    rec, dp, _ = setup()
    rec.on_endpoints([put(record("stale", "gone", "10.0.0.7", "02:00:00:00:00:07"), 3),
                      put(record("new", "h1", "10.0.0.7", "02:00:00:00:00:08"), 9)])
    assert set(macs(dp)) == {"02:00:00:00:00:08"}
    rec.on_hosts([host("gone", "172.31.0.9")])  # it comes back: the first claim holds again
    assert set(macs(dp)) == {"02:00:00:00:00:07"}


def test_peer_vteps_survive_in_a_file_checked_when_read(tmp_path: Any) -> None:
    path = str(tmp_path / "peers.json")
    assert peers.load(path) == {}
    peers.save(path, {"h1": "172.31.0.2"})
    assert peers.load(path) == {"h1": "172.31.0.2"}
    (tmp_path / "peers.json").write_text('{"h1": "1.2.3.4,output:9", "h2": "172.31.0.3"}')
    assert peers.load(path) == {"h2": "172.31.0.3"}
    (tmp_path / "peers.json").write_text("[" * 100000)
    assert peers.load(path) == {}


def test_a_derived_mac_is_claimed_as_its_address() -> None:
    # 0a:58:0a:00:00:07 is the MAC the agent derives from 10.0.0.7: taking it is taking 10.0.0.7.
    rec, dp, counts = setup()
    rec.on_endpoints([put(record("owner", "h1", "10.0.0.7", "0a:58:0a:00:00:07"), 10),
                      put(record("copycat", "h2", "10.0.0.8", "0a:58:0a:00:00:07"), 11)])
    assert [e.ips for e in macs(dp).values()] == [("10.0.0.7",)] and counts.conflicts == 1
    rec.on_endpoints([delete("owner")])
    assert [e.ips for e in macs(dp).values()] == [("10.0.0.8",)]


@pytest.mark.parametrize(("subnets", "ips", "taken"), [
    ("10.0.0.0/24,fd00::/64", ["10.0.0.2/24", "fd00::2/64"], True),    # dual stack, both named
    ("10.0.0.0/24,fd00::/64", ["10.0.0.2/24", "fd01::2/64"], False),   # IPv6 outside its subnet
    ("10.0.0.0/24", ["10.0.0.2/24", "fd00::2/64"], True),              # an older record: v4 only
    ("10.0.0.0/24", ["10.0.1.2/24", "fd00::2/64"], False),             # IPv4 still checked
])
def test_dual_stack_addresses_are_checked_per_family(subnets: str, ips: list[str],
                                                      taken: bool) -> None:
    rec, dp, counts = setup()
    rec.on_networks([network(subnet=subnets, created=2)])
    rec.on_endpoints([put(record("d", "h1", "10.0.0.2", "02:00:00:00:00:0d", ips=ips), 5)])
    assert ("02:00:00:00:00:0d" in macs(dp)) is taken
    assert counts.rejected == ([] if taken else [("endpoint", "subnet")])


def test_labels_of_a_good_record_reach_the_agents_view_and_old_records_have_none() -> None:
    from overlay.agent import verify

    key = r.endpoint_key(NET, "good", "eth0")
    labelled = {**GOOD, "labels": {"app": "web", "example.com/tier": ""}}
    assert dict(verify.parse_endpoint(key, labelled, 2).labels) == {"app": "web",
                                                                    "example.com/tier": ""}
    old = {k: v for k, v in GOOD.items() if k != "labels"}
    assert dict(verify.parse_endpoint(key, old, 2).labels) == {}
