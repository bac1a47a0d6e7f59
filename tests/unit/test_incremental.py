"""The incremental dataplane against the whole-table oracle: after any sequence of local and
remote changes (including two endpoints claiming one MAC or address, and networks appearing and
going), the switch holds exactly compute_flows(state), and only bundles were sent."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import Gateway, LocalPort, RemoteEndpoint
from overlay.dataplane.flowtable import compute_rules
from overlay.errors import CniError
from overlay.ovs.flow import Actions, Identity, Op
from overlay.ovs.flowtext import op_text
from overlay.ovs.testing import FakeOfctl


def oracle(dp: Dataplane) -> dict[Identity, Actions]:
    return dict(compute_rules(dp.state()))


def text(bundle: list[Op]) -> list[str]:
    return [op_text(op, 0) for op in bundle]


def new_dataplane() -> tuple[Dataplane, FakeOfctl]:
    fake = FakeOfctl()
    dp = Dataplane(ofctl=cast(Any, fake), bridge="br-int", tunnel_ofport=1, held=True)
    dp.release()
    return dp, fake


VNIS = st.sampled_from([42, 43])
# Few MACs, IPs and VTEPs, so that claims collide often.
MACS = st.sampled_from([f"0a:58:0a:00:00:0{i}" for i in range(4)])
IPS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
VTEPS = st.sampled_from(["172.31.0.2", "172.31.0.3", "172.31.0.4"])
local_op = st.tuples(st.just("local"), st.sampled_from(["a", "b", "c"]),
                     st.none() | st.builds(LocalPort, VNIS, MACS, st.tuples(IPS),
                                           st.integers(2, 4)))
remote_op = st.tuples(st.just("remote"), st.sampled_from(["r1", "r2", "r3", "r4"]),
                      st.none() | st.builds(RemoteEndpoint, VNIS, MACS, st.tuples(IPS), VTEPS))

# A gateway MAC equal to an endpoint's MAC makes the gateway's rule and the endpoint's meet.
gateway_op = st.tuples(st.just("gateway"), VNIS,
                       st.none() | st.builds(Gateway, st.just(0), MACS | st.just("0e:6f:76:00:00:2a"),
                                             st.sampled_from(["10.0.0.1", "10.0.0.254"]),
                                             st.integers(5, 6)))


def apply_batch(dp: Dataplane, batch: list[tuple[str, Any, Any]]) -> None:
    remote = {}
    for kind, key, value in batch:
        if kind == "gateway":
            vni = cast(int, key)
            dp.set_gateway(vni, None if value is None
                           else Gateway(vni, value.mac, value.ip, value.ofport))
        elif kind == "local":
            if value is None:
                dp.remove_endpoint(key)
            else:
                dp.install_endpoint(key, value)
        else:
            remote[key] = value
    if remote:
        dp.update_remote(remote)


BATCHES = st.lists(st.lists(local_op | remote_op | gateway_op, min_size=1, max_size=4),
                   max_size=25)


@settings(max_examples=300, deadline=None)
@given(BATCHES)
def test_increments_equal_the_whole_table(batches: list[list[tuple[str, Any, Any]]]) -> None:
    dp, fake = new_dataplane()
    for batch in batches:
        apply_batch(dp, batch)
        assert fake.table == oracle(dp)
    assert fake.replacements == 1  # the release; everything after it went as bundles
    assert dp.verify()


@settings(max_examples=200, deadline=None)
@given(BATCHES, st.integers(0, 25))
def test_a_model_built_while_held_then_changed_equals_the_whole_table(
        batches: list[list[tuple[str, Any, Any]]], held: int) -> None:
    """While held (a restart's first snapshot) rules are recorded without operations; the
    model must be the same, and so must every increment after the release."""
    fake = FakeOfctl()
    dp = Dataplane(ofctl=cast(Any, fake), bridge="br-int", tunnel_ofport=1, held=True)
    for batch in batches[:held]:
        apply_batch(dp, batch)
    dp.release()
    assert fake.table == oracle(dp)
    for batch in batches[held:]:
        apply_batch(dp, batch)
        assert fake.table == oracle(dp)
    assert fake.replacements == 1


def test_one_remote_event_sends_only_that_endpoints_rules() -> None:
    dp, fake = new_dataplane()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 2))
    dp.update_remote({f"r{i}": RemoteEndpoint(42, f"0a:58:0a:00:{i // 256:02x}:{i % 256:02x}",
                                              (f"10.0.{i // 256}.{i % 256}",), "172.31.0.2")
                      for i in range(2, 1000)})
    fake.bundles.clear()
    dp.update_remote({"r5000": RemoteEndpoint(42, "0a:58:0a:00:13:88", ("10.0.19.136",),
                                              "172.31.0.2")})
    dp.update_remote({"r5000": None})
    # The VTEP was known already, so neither the tunnel nor the broadcast rules change.
    assert [len(b) for b in fake.bundles] == [2, 2]
    assert all("0a:58:0a:00:13:88" in op or "10.0.19.136" in op
               for b in fake.bundles for op in text(b))


def test_a_host_change_touches_the_network_rules_once_per_batch() -> None:
    dp, fake = new_dataplane()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 2))
    fake.bundles.clear()
    dp.update_remote({f"r{i}": RemoteEndpoint(42, f"0a:58:0a:00:01:{i:02x}", (f"10.0.1.{i}",),
                                              f"172.31.0.{i}") for i in range(2, 50)})
    flood = [op for op in fake.bundles[0] if op.identity[:2] == (20, 50)]
    assert len(flood) == 1  # one modify of the broadcast rule for 48 new VTEPs, not 48


def test_drift_found_by_count_is_repaired_by_a_whole_table_push() -> None:
    dp, fake = new_dataplane()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 2))
    fake.table.pop(next(iter(fake.table)))  # someone deleted a rule behind our back
    assert not dp.verify()
    assert fake.table == oracle(dp) and fake.replacements == 2


def test_rules_wait_while_held_and_land_in_one_replacement() -> None:
    fake = FakeOfctl()
    dp = Dataplane(ofctl=cast(Any, fake), bridge="br-int", tunnel_ofport=1, held=True)
    dp.load_local({"a": LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 2)})
    dp.update_remote({"r": RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",), "172.31.0.2")})
    assert fake.table == {} and fake.bundles == [] and not dp.table_in_switch()
    dp.release()
    assert fake.table == oracle(dp) and fake.replacements == 1 and dp.table_in_switch()


def test_the_periodic_check_repairs_a_failed_bundle_without_any_other_change() -> None:
    """A refused bundle leaves the switch without the change; the model has it. The rule
    count is the same (a modify), so only the failure itself says the table is unknown: the
    next verify() must put the table back, with no further event to carry it."""
    fake = FakeOfctl()
    dp = Dataplane(ofctl=cast(Any, fake), bridge="br-int", tunnel_ofport=1, held=True)
    dp.release()
    dp.install_endpoint("a", LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1",), 2))
    dp.update_remote({"r": RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",), "172.31.0.2")})
    assert fake.table == oracle(dp)
    fake.refuse = 1
    with pytest.raises(CniError):  # the host moved: every rule of r is modified, none added
        dp.update_remote({"r": RemoteEndpoint(42, "0a:58:0a:00:00:02", ("10.0.0.2",),
                                              "172.31.0.3")})
    assert fake.table != oracle(dp) and len(fake.table) == len(oracle(dp))
    assert not dp.verify()  # repaired, not merely counted
    assert fake.table == oracle(dp) and dp.table_in_switch()
    assert dp.verify()  # and nothing left to do
