"""Ovsdb.ensure_port against a real ovsdb-server and ovs-vswitchd (a 1-host lab's).

The wait for a port's ofport is woken by the IDL's notifications (overlay/ovs/ofportwait.py):
these check that it returns the number ovs-vswitchd gave, that an interface ovs-vswitchd
refuses fails with ovs-vswitchd's own reason (not by running out of time), and that many
ports added at once from many threads each get theirs (no lost wake-up, no deadlock between
the callers and the IDL's thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from overlay.errors import CniError, Code
from overlay.lab.host import OvsPaths
from overlay.lab.topology import Lab
from overlay.ovs.ovsdb import Ovsdb


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1, network=None)


@pytest.fixture
def ovs(lab: Lab) -> Iterator[Ovsdb]:
    client = Ovsdb(endpoint=OvsPaths(lab.hosts[0].ovs_dir).endpoint, timeout=60)
    yield client
    client.close()


def test_a_new_port_gets_the_ofport_the_switch_gave_it(lab: Lab, ovs: Ovsdb) -> None:
    name = f"{lab.prefix}a"[:15]
    try:
        ofport = ovs.ensure_port(lab.bridge, name, iface={"type": "internal"})
        assert ofport > 0
        assert ovs.ofport(name) == ofport
        assert ovs.ensure_port(lab.bridge, name, iface={"type": "internal"}) == ofport
    finally:
        ovs.delete_port(name)
    assert ovs.ofport(name) is None


def test_a_device_that_does_not_exist_fails_with_the_switch_s_reason(lab: Lab,
                                                                       ovs: Ovsdb) -> None:
    name = f"{lab.prefix}nodev"[:15]  # a system port for a device no one created
    try:
        with pytest.raises(CniError) as err:
            ovs.ensure_port(lab.bridge, name)
        assert err.value.code is Code.OVS_FAILURE
        assert name in err.value.msg
        # ovs-vswitchd's error column, e.g. "could not open network device ... (No such
        # device)", not the waiter's "no ofport after 60 s".
        assert "device" in err.value.details and "no ofport after" not in err.value.details
    finally:
        ovs.delete_port(name)


def test_ports_added_at_once_from_many_threads_each_get_their_own(lab: Lab, ovs: Ovsdb) -> None:
    names = [f"{lab.prefix}p{i}"[:15] for i in range(12)]
    got: dict[str, int] = {}
    failures: list[BaseException] = []
    gate = threading.Barrier(len(names))

    def add(name: str) -> None:
        gate.wait()
        try:
            got[name] = ovs.ensure_port(lab.bridge, name, iface={"type": "internal"})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        assert sorted(got) == sorted(names)
        assert len(set(got.values())) == len(names)  # each its own number
        assert all(ovs.ofport(n) == got[n] for n in names)
    finally:
        for n in names:
            ovs.delete_port(n)


def test_a_requested_ofport_is_the_one_the_port_gets_and_is_not_handed_out_again(
        lab: Lab, ovs: Ovsdb) -> None:
    # ADD installs a container's flows with the number it asked for while ovs-vswitchd
    # attaches the port (overlay/cni/attach.py): the switch must give exactly that number,
    # and a number just freed must not come back at once (flows of the port that had it).
    names = [f"{lab.prefix}r{i}"[:15] for i in range(3)]
    try:
        first = ovs.request_ofport()
        assert ovs.ensure_port(lab.bridge, names[0], iface={"type": "internal"},
                               ofport_request=first) == first
        ovs.delete_port(names[0])
        again = [ovs.request_ofport() for _ in names[1:]]
        assert first not in again and len(set(again)) == len(again)
        for name, number in zip(names[1:], again, strict=True):
            assert ovs.ensure_port(lab.bridge, name, iface={"type": "internal"},
                                   ofport_request=number) == number
            assert ovs.ofport(name) == number
    finally:
        for n in names:
            ovs.delete_port(n)
