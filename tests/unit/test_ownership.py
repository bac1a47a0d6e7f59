"""A host changes only what it owns (issue 15, point 3): endpoint records are written and
deleted only by the host they name, through every path that deletes them (DEL, GC, the janitor,
ADD's rollback), and a host name belongs to one agent installation. Against the in-memory etcd
of overlay/store/testing.py; races are slipped in with its before_txn hook, not with sleeps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from overlay.agent.janitor import Janitor
from overlay.cni import requests
from overlay.cni.netconf import CniEnv, parse_netconf
from overlay.cni.ports import HostInfo
from overlay.cni.service import CniService
from overlay.cni.testing import FakeHost
from overlay.errors import CniError, Code
from overlay.netlink import veth
from overlay.store import records as r
from overlay.store.etcd import Store
from overlay.store.ownership import HostNameTaken
from overlay.store.testing import FakeEtcd, fake_store

CONF = parse_netconf(json.dumps({
    "cniVersion": "1.1.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
    "ipam": {"type": "overlay", "subnet": "10.7.0.0/24"}}).encode())
KEY = r.endpoint_key("net", "c0", "eth0")


def record(host: str, ip: str = "10.7.0.2/24") -> r.EndpointRecord:
    return r.EndpointRecord(network="net", container_id="c0", ifname="eth0", host=host, vni=7,
                            ips=[ip], mac="0a:58:0a:07:00:02", port="ovlx", netns="/x")


def host_of(etcd: FakeEtcd, key: str = KEY) -> str | None:
    value, _ = etcd.get(key)
    return None if value is None else str(json.loads(value)["host"])


# --- the Store's verbs ---------------------------------------------------------------------------

def test_delete_endpoint_leaves_another_hosts_record_and_succeeds() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    store.put_endpoint(record("host0"))
    assert store.delete_endpoint("net", "c0", "eth0", host="host1") == "host0"
    assert host_of(etcd) == "host0"
    assert store.delete_endpoint("net", "c0", "eth0", host="host0") is None
    assert etcd.get(KEY)[0] is None
    assert store.delete_endpoint("net", "c0", "eth0", host="host0") is None  # idempotent


def test_delete_endpoint_rechecks_a_record_that_changed_hands_after_it_was_read() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    store.put_endpoint(record("host1"))
    # Between the read (ours) and the delete, host0 takes the key over.
    etcd.before_txn = lambda: etcd.put(KEY, record("host0").to_json())
    assert store.delete_endpoint("net", "c0", "eth0", host="host1") == "host0"
    assert host_of(etcd) == "host0"


def test_put_endpoint_refuses_another_hosts_key_naming_it() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    store.put_endpoint(record("host0"))
    store.put_endpoint(record("host0", "10.7.0.3/24"))  # our own: replaced
    with pytest.raises(CniError) as err:
        store.put_endpoint(record("host1"))
    assert err.value.code is Code.ALREADY_ATTACHED and "host host0" in err.value.msg
    assert json.loads(etcd.get(KEY)[0] or b"")["ips"] == ["10.7.0.3/24"]


def test_put_endpoint_loses_to_a_create_between_its_read_and_write() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    etcd.before_txn = lambda: etcd.put(KEY, record("host0").to_json())
    with pytest.raises(CniError) as err:
        store.put_endpoint(record("host1"))
    assert err.value.code is Code.ALREADY_ATTACHED and host_of(etcd) == "host0"


def labels_of(etcd: FakeEtcd) -> dict[str, str] | None:
    value, _ = etcd.get(KEY)
    return None if value is None else dict(json.loads(value)["labels"])


def test_set_endpoint_labels_changes_only_the_labels_of_that_attachment() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    store.put_endpoint(record("host1"))
    assert store.set_endpoint_labels("net", "c0", "eth0", {"app": "web"}, host="host1",
                                     netns="/x")
    assert labels_of(etcd) == {"app": "web"}
    assert json.loads(etcd.get(KEY)[0] or b"")["ips"] == ["10.7.0.2/24"]
    revision = etcd.get(KEY)[1]
    assert store.set_endpoint_labels("net", "c0", "eth0", {"app": "web"}, host="host1",
                                     netns="/x")
    assert etcd.get(KEY)[1] == revision  # the same labels again: not written (no watch event)
    # Another host's record, or a later attachment under the same key (another netns): no.
    assert not store.set_endpoint_labels("net", "c0", "eth0", {"app": "db"}, host="host0",
                                         netns="/x")
    assert not store.set_endpoint_labels("net", "c0", "eth0", {"app": "db"}, host="host1",
                                         netns="/y")
    assert labels_of(etcd) == {"app": "web"}


def test_set_endpoint_labels_never_brings_back_a_deleted_record() -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    assert not store.set_endpoint_labels("net", "c0", "eth0", {"app": "web"}, host="host1",
                                         netns="/x")
    store.put_endpoint(record("host1"))
    # Deleted between the read and the write (a Leave): the write fails, the read says gone.
    etcd.before_txn = lambda: etcd.delete(KEY)
    assert not store.set_endpoint_labels("net", "c0", "eth0", {"app": "web"}, host="host1",
                                         netns="/x")
    assert etcd.get(KEY)[0] is None


def host(agent_id: str, vtep: str = "172.31.0.1") -> r.HostRecord:
    return r.HostRecord("host0", vtep, "netdev", agent_id)


def test_a_second_installation_with_a_live_agents_name_is_refused() -> None:
    etcd = FakeEtcd()
    fake_store(etcd)._register_host(host("aaa"), 10)
    before = etcd.get(r.host_key("host0"))
    with pytest.raises(HostNameTaken, match="aaa"):
        fake_store(etcd)._register_host(host("bbb", "172.31.0.2"), 10)
    assert etcd.get(r.host_key("host0")) == before
    assert len(etcd.leases) == 1  # the refused claim's lease was given back


def test_the_same_installation_restarting_takes_its_name_back_from_its_live_lease() -> None:
    etcd = FakeEtcd()
    fake_store(etcd)._register_host(host("aaa"), 10)  # then killed: its lease lives on
    old_lease = etcd.get(r.host_key("host0"))[1].lease_id  # type: ignore[union-attr]
    fake_store(etcd)._register_host(host("aaa"), 10)
    new_lease = etcd.get(r.host_key("host0"))[1].lease_id  # type: ignore[union-attr]
    assert new_lease != old_lease
    etcd.expire(old_lease)  # the old lease running out no longer takes the record along
    assert etcd.get(r.host_key("host0"))[0] is not None


@pytest.mark.parametrize("found,refused", [
    (host("", "172.31.0.1"), False),  # an older agent of this machine: same VTEP
    (host("", "172.31.0.2"), True),   # an older agent elsewhere
])
def test_records_without_agent_id_are_told_apart_by_vtep(found: r.HostRecord,
                                                         refused: bool) -> None:
    etcd = FakeEtcd()
    etcd.put(r.host_key("host0"), found.to_json(), lease=etcd.lease(10))
    if refused:
        with pytest.raises(HostNameTaken):
            fake_store(etcd)._register_host(host("aaa"), 10)
    else:
        fake_store(etcd)._register_host(host("aaa"), 10)


def test_an_unleased_record_holds_no_name() -> None:
    etcd = FakeEtcd()
    etcd.put(r.host_key("host0"), host("zzz", "172.31.0.9").to_json())  # by hand, no lease
    fake_store(etcd)._register_host(host("aaa"), 10)
    assert r.HostRecord.from_json(etcd.get(r.host_key("host0"))[0] or b"").agent_id == "aaa"


@pytest.mark.parametrize("tamper", ["change", "delete", "unlease"])
def test_our_host_record_is_put_back(tamper: str) -> None:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    mine = host("aaa")
    store._register_host(mine, 10)
    assert store._put_back(mine) is False  # as we wrote it: nothing to do
    key = r.host_key("host0")
    if tamper == "change":
        etcd.put(key, host("evil", "172.31.0.99").to_json(), lease=etcd.lease(10))
    elif tamper == "delete":
        etcd.delete(key)
    else:
        etcd.put(key, mine.to_json())  # same value, but it would outlive us
    assert store._put_back(mine) is True
    value, meta = etcd.get(key)
    assert value == mine.to_json().encode() and meta is not None
    assert meta.lease_id == store._host_lease.lease.id


def test_the_hosts_watch_wakes_the_lease_thread_only_for_a_change_of_ours() -> None:
    store = fake_store()
    mine = host("aaa")
    store._register_host(mine, 10)
    store.host_changed(r.host_key("host1"), b"{}")
    store.host_changed(r.host_key("host0"), mine.to_json().encode())
    assert not store._host_lease.wake.is_set()
    store.host_changed(r.host_key("host0"), None)
    assert store._host_lease.wake.is_set()


# --- every path of the CNI service that deletes records ----------------------------------------

@dataclass
class Host1:
    """host1's CNI service: the real Store's verbs on the in-memory etcd, fakes for the rest."""

    service: CniService
    etcd: FakeEtcd
    store: Store
    fakes: FakeHost


@pytest.fixture
def host1() -> Host1:
    etcd = FakeEtcd()
    store = fake_store(etcd)
    fakes = FakeHost()
    service = CniService(host=HostInfo("host1", "br-int", 1500), endpoints=store,
                         network_records=fakes.endpoints, ports=fakes.ports, flows=fakes.flows,
                         allocator=fakes.allocator, gateways=fakes.gateways,
                         networks=fakes.networks, subnets=fakes.networks, links=fakes.links)
    store.put_endpoint(record("host0"))  # c0 lives on host0
    return Host1(service, etcd, store, fakes)


ENV = CniEnv("DEL", "c0", "/var/run/netns/x", "eth0")


def test_del_on_another_host_deletes_nothing_and_succeeds(host1: Host1) -> None:
    assert host1.service.delete(ENV, CONF) == b""
    assert host_of(host1.etcd) == "host0"


def test_gc_leaves_a_record_that_another_host_took_over(
        host1: Host1, monkeypatch: pytest.MonkeyPatch) -> None:
    # GC's read still showed the record as ours (the ID moved to host0 since).
    monkeypatch.setattr(host1.store, "endpoints", lambda network: [record("host1")])
    monkeypatch.setattr(requests, "valid_attachments", lambda c: set())
    assert host1.service.gc(ENV, CONF) == b""
    assert host_of(host1.etcd) == "host0"


def test_janitor_leaves_a_record_that_another_host_took_over(host1: Host1) -> None:
    # The watches last saw the record naming this host, with no port here: stale, it thinks.
    janitor = Janitor(host=host1.service.host, ports=host1.fakes.ports, endpoints=host1.store,
                      links=host1.fakes.links, detacher=host1.service.detacher)
    removed = janitor.run([record("host1")])
    assert removed and host_of(host1.etcd) == "host0"


def test_add_rollback_leaves_the_record_of_the_host_that_won_the_key(host1: Host1) -> None:
    link = veth.ContainerLink("ovlx", "0a:00:00:00:00:01", "eth0", "0a:58:0a:07:00:05", 2)
    undo: list[Any] = []
    with pytest.raises(CniError) as err:  # host0 wrote the key after our precheck
        host1.service.attacher._publish(ENV, CONF, link, [], [], undo)
    assert err.value.code is Code.ALREADY_ATTACHED and "host0" in err.value.msg
    for step in reversed(undo):
        step()
    assert host_of(host1.etcd) == "host0"


def test_add_of_a_container_attached_on_another_host_names_that_host(host1: Host1) -> None:
    with pytest.raises(CniError) as err:
        host1.service.add(ENV, CONF)
    assert err.value.code is Code.ALREADY_ATTACHED
    assert "already attached on host host0" in err.value.msg
    assert host_of(host1.etcd) == "host0" and not host1.fakes.links.links
