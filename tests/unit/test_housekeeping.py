"""The agent's housekeeping on the CNI service's fakes: the janitor removes what vanished
without a DEL (and only this host's), the doctor says where OVS, the kernel and etcd disagree.
tests/integration/test_janitor.py runs both against real containers."""

from __future__ import annotations

import json
from pathlib import Path

from overlay.agent.doctor import HostDoctor
from overlay.agent.janitor import Janitor
from overlay.cni.netconf import CniEnv, parse_netconf
from overlay.cni.testing import FakeHost
from overlay.netlink import veth
from overlay.store.records import EndpointRecord, Holder

CONF = parse_netconf(json.dumps({
    "cniVersion": "1.1.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
    "ipam": {"type": "overlay", "subnet": "10.7.0.0/24"}}).encode())


def add(host: FakeHost, container_id: str, netns: str) -> None:
    host.service.add(CniEnv("ADD", container_id, netns, "eth0"), CONF)


def janitor(host: FakeHost) -> Janitor:
    return Janitor(host=host.info, ports=host.ports, endpoints=host.endpoints,
                   links=host.links, detacher=host.service.detacher)


def doctor(host: FakeHost) -> HostDoctor:
    return HostDoctor(host=host.info, ports=host.ports, endpoints=host.endpoints,
                      flows=host.flows, allocator=host.allocator, links=host.links,
                      gateways=host.gateways)


def record(container_id: str, on: str) -> EndpointRecord:
    return EndpointRecord(network="net", container_id=container_id, ifname="eth0", host=on,
                          vni=7, ips=["10.7.0.40/24"], mac="0a:58:0a:07:00:28",
                          port=veth.hostside_name(container_id, "eth0"), netns="/x")


def test_janitor_removes_what_vanished_and_only_that(tmp_path: Path) -> None:
    host = FakeHost()
    alive = tmp_path / "alive"
    alive.touch()
    add(host, "alive", str(alive))
    add(host, "gone", str(tmp_path / "gone"))  # its namespace is no more
    add(host, "noveth", str(alive))
    host.links.links.pop(veth.hostside_name("noveth", "eth0"))  # the kernel took the pair
    host.endpoints.records[("net", "stale", "eth0")] = record("stale", "host1")  # no port
    host.endpoints.records[("net", "there", "eth0")] = record("there", "host0")
    removed = janitor(host).run()
    assert sorted(removed) == [
        f"net/gone/eth0 (netns {tmp_path / 'gone'} is gone)",
        f"net/noveth/eth0 (netns {alive} is gone)",
        "net/stale/eth0 (no port on this host)"]
    assert sorted(host.flows.removed) == ["net/gone/eth0", "net/noveth/eth0", "net/stale/eth0"]
    assert set(host.endpoints.records) == {("net", "alive", "eth0"), ("net", "there", "eth0")}
    assert host.service.check(CniEnv("CHECK", "alive", str(alive), "eth0"), CONF) == b""
    assert janitor(host).run() == []  # nothing left to do


def test_janitor_given_the_watches_records_reads_no_etcd(tmp_path: Path) -> None:
    host = FakeHost()
    host.endpoints.records[("net", "stale", "eth0")] = record("stale", "host1")
    assert janitor(host).run([]) == []
    assert ("net", "stale", "eth0") in host.endpoints.records
    assert janitor(host).run([record("stale", "host1")]) == [
        "net/stale/eth0 (no port on this host)"]


def test_doctor_is_quiet_on_a_healthy_host_and_names_every_disagreement(tmp_path: Path) -> None:
    host = FakeHost()
    add(host, "c1", str(tmp_path))
    add(host, "c2", str(tmp_path))
    assert doctor(host).problems() == []
    p1, p2 = veth.hostside_name("c1", "eth0"), veth.hostside_name("c2", "eth0")
    host.ports.ports_.pop(p1)
    host.links.links.pop(p1)
    host.flows.local.pop("net/c1/eth0")
    ip = next(iter(host.allocator.held_by("net", "c1/eth0")))
    host.allocator.held["net"][ip] = Holder("c9/eth0", "host1")
    del host.endpoints.records[("net", "c2", "eth0")]
    host.gateways.broken.append("gateway ovg7: no address")
    assert doctor(host).problems() == [
        f"net/c1/eth0: endpoint record without a working OVS port {p1}",
        f"net/c1/eth0: endpoint record without its veth {p1}",
        "net/c1/eth0: no flows installed",
        f"net/c1/eth0: address {ip} is held by c9/eth0",
        f"net/c2/eth0: OVS port {p2} without an endpoint record",
        "gateway ovg7: no address"]
