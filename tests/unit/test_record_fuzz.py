"""Fuzzed etcd records (hypothesis, fixed seed, bounded examples) through the reconciler's
entry points: endpoint, host and network records of any JSON shape, depth or size, mutations
of good records, and raw bytes. Whatever comes, no exception escapes, a record that is not
taken is counted, and the good records of the same batch are applied.

OVERLAY_FUZZ_RANDOM=1 draws new examples; OVERLAY_FUZZ_SCALE multiplies their number.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.agent.reconciler import Reconciler
from overlay.dataplane.dataplane import Dataplane
from overlay.ovs.testing import FakeOfctl
from overlay.store import records as r
from overlay.store.stream import Change

SCALE = float(os.environ.get("OVERLAY_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, derandomize=os.environ.get("OVERLAY_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None)

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=40) | st.sampled_from(["10.0.0.9/24", "02:00:00:00:00:09", "n",
                                                     "h1", "fd00::9/64", "10.0.0.9", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=30)
deep = st.builds(lambda n, o, c: (o * n + c * n).encode(), st.integers(1, 30000),
                 st.sampled_from(["[", '{"a":']), st.sampled_from(["]", "}"]))
huge = st.builds(lambda n: json.dumps({"host": "h1", "pad": "x" * n}).encode(),
                 st.integers(1000, 200000))
raw = st.binary(max_size=200)


def good_endpoint(cid: str, host: str, i: int) -> dict[str, Any]:
    rec = r.EndpointRecord(network="n", container_id=cid, ifname="eth0", host=host, vni=42,
                           ips=[f"10.0.0.{i}/24"], mac=f"02:00:00:00:00:{i:02x}", port="p",
                           netns="/x")
    return dict(json.loads(rec.to_json()))


def mutated(kind: str) -> st.SearchStrategy[bytes]:
    base = {"endpoint": good_endpoint("fuzz", "h1", 9),  # its key is fuzz + cid: mismatch
            "host": {"host": "hz", "vtep": "172.31.0.9", "datapath": "netdev"},
            "network": {"name": "z", "vni": 77, "subnet": "10.7.0.0/24"}}[kind]
    field = st.sampled_from([*base, "extra"])
    return st.builds(lambda f, v: json.dumps({**base, f: v}).encode(), field, json_values)


def values(kind: str) -> st.SearchStrategy[bytes]:
    whole = json_values.map(lambda v: json.dumps(v).encode())
    return st.one_of(mutated(kind), whole, deep, huge, raw)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, reason: str) -> None:
        self.n += 1


def reconciler() -> tuple[Reconciler, Dataplane, Counter]:
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    counted = Counter()
    rec = Reconciler(host="h0", dataplane=dp, on_reject=counted)
    return rec, dp, counted


def network(name: str, vni: int, subnet: str, rev: int) -> Change:
    return Change(r.network_key(name), r.NetworkRecord(name, vni, subnet).to_json().encode(),
                  rev, rev)


def host(name: str, vtep: str, rev: int) -> Change:
    return Change(r.host_key(name), r.HostRecord(name, vtep, "netdev").to_json().encode(),
                  rev, rev)


def endpoint(obj: dict[str, Any], rev: int) -> Change:
    key = r.endpoint_key(obj["network"], obj["container_id"], obj["ifname"])
    return Change(key, json.dumps(obj).encode(), rev, rev)


GOOD_MACS = {"02:00:00:00:00:02", "02:00:00:00:00:03"}


def remote_macs(dp: Dataplane) -> set[str]:
    return {e.mac for e in dp.state().remote.values()}


@settings(FUZZ, max_examples=int(500 * SCALE))
@given(value=values("endpoint"), cid=st.just("") | st.text(max_size=20))
def test_fuzzed_endpoint_records(value: bytes, cid: str) -> None:
    rec, dp, counted = reconciler()
    rec.on_networks([network("n", 42, "10.0.0.0/24", 1)])
    rec.on_hosts([host("h1", "172.31.0.2", 2), host("h2", "172.31.0.3", 3)])
    key = r.ENDPOINTS + "n/fuzz" + cid + "/eth0"  # never a good record's key
    rec.on_endpoints([endpoint(good_endpoint("a", "h1", 2), 10), Change(key, value, 30, 30),
                      endpoint(good_endpoint("b", "h2", 3), 11)])
    # The reconciler's model: was it taken (good enough) or not?
    taken = key in rec._endpoints  # noqa: SLF001
    assert counted.n == (0 if taken else 1)
    assert remote_macs(dp) >= GOOD_MACS
    # The same key deleted, and the snapshot page of a restart (every key a put) again.
    rec.on_endpoints([Change(key, None, 31)])
    assert remote_macs(dp) == GOOD_MACS


@settings(FUZZ, max_examples=int(250 * SCALE))
@given(value=values("host"), name=st.text(min_size=1, max_size=20))
def test_fuzzed_host_records(value: bytes, name: str) -> None:
    rec, dp, counted = reconciler()
    rec.on_networks([network("n", 42, "10.0.0.0/24", 1)])
    rec.on_endpoints([endpoint(good_endpoint("a", "h1", 2), 10),
                      endpoint(good_endpoint("b", "h2", 3), 11)])
    rec.on_hosts([host("h1", "172.31.0.2", 2), Change(r.HOSTS + "z" + name, value, 4, 4),
                  host("h2", "172.31.0.3", 3)])
    assert counted.n <= 1
    assert remote_macs(dp) == GOOD_MACS
    assert {e.vtep for e in dp.state().remote.values()} == {"172.31.0.2", "172.31.0.3"}


@settings(FUZZ, max_examples=int(250 * SCALE))
@given(value=values("network"), name=st.text(min_size=1, max_size=20))
def test_fuzzed_network_records(value: bytes, name: str) -> None:
    rec, dp, counted = reconciler()
    rec.on_hosts([host("h1", "172.31.0.2", 2), host("h2", "172.31.0.3", 3)])
    rec.on_endpoints([endpoint(good_endpoint("a", "h1", 2), 10),
                      endpoint(good_endpoint("b", "h2", 3), 11)])
    rec.on_networks([network("n", 42, "10.0.0.0/24", 1),
                     Change(r.NETWORKS + "z" + name, value, 5, 5)])
    assert counted.n <= 1
    assert remote_macs(dp) == GOOD_MACS
