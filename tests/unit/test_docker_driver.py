"""The Docker plugin's protocol and verbs on the CNI service's fakes (overlay/cni/testing.py):
no root, no dockerd, no etcd. tests/e2e/test_docker.py runs the same verbs from real dockerds.

A fake daemon answers the plugin's two questions (a network by ID, the networks of a driver);
the fake allocator is given the real one's promise the driver relies on: asked again for the
same owner, it returns what that owner holds (overlay/ipam/allocator.py)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from overlay.cni.service import CniService
from overlay.cni.testing import FakeAllocator, FakeHost
from overlay.docker import protocol
from overlay.docker.daemon import DockerNetwork
from overlay.docker.driver import NetworkDriver
from overlay.docker.endpoints import EndpointFiles
from overlay.docker.ipam import IpamDriver, container_id_for
from overlay.docker.labels import ContainerLabels
from overlay.docker.networks import Networks
from overlay.docker.publish import Publisher
from overlay.errors import CniError, Code
from overlay.ipam.allocator import Assigned
from overlay.model import Address, IpamConfig
from overlay.store import records
from overlay.store.records import Holder, NetworkRecord

NET_ID = "a" * 64
EP_ID = "b" * 64
MAC = "02:42:0a:00:00:09"
SANDBOX = "/var/run/docker/netns/0123456789ab"


class OwnerAllocator(FakeAllocator):
    def allocate(self, network: str, owner: str, ipam: IpamConfig,
                 requested: Sequence[Address] = ()) -> list[Assigned]:
        held = self.held.setdefault(network, {})
        mine = [ip for ip, h in held.items() if h.owner == owner]
        wanted = mine or list(requested)
        if not wanted:
            return super().allocate(network, owner, ipam, requested)
        if wanted[0] in held and held[wanted[0]].owner != owner:
            raise CniError(Code.REQUESTED_ADDRESS_UNAVAILABLE, f"{wanted[0]} is in use")
        held[wanted[0]] = Holder(owner, self.host)
        prefix = ipam.range_sets[0][0].subnet.prefixlen
        return [Assigned(ipaddress.ip_interface(f"{wanted[0]}/{prefix}"), None)]

    def allocation(self, network: str, ip: Address) -> Holder | None:
        return self.held.get(network, {}).get(ip)


class FakeDaemon:
    def __init__(self) -> None:
        self.nets: dict[str, DockerNetwork] = {}
        self.holders: dict[str, str] = {}  # endpoint ID -> container ID, once listed
        self.labels: dict[str, dict[str, str]] = {}  # container ID -> its labels
        self.answer = threading.Event()  # cleared: the label questions wait (a busy daemon)
        self.answer.set()

    def add(self, name: str, vni: int, subnet: str, net_id: str = NET_ID) -> None:
        self.nets[net_id] = DockerNetwork(net_id, name, "ovs", "ovs", (subnet,),
                                          {"vxlanID": str(vni)})

    def network(self, network_id: str) -> DockerNetwork | None:
        return self.nets.get(network_id)

    def networks(self, driver: str) -> list[DockerNetwork]:
        return [n for n in self.nets.values() if n.driver == driver]

    def endpoint_container(self, network_id: str, endpoint_id: str) -> str | None:
        self.answer.wait()
        return self.holders.get(endpoint_id)

    def container_labels(self, container_id: str) -> tuple[dict[str, str], str]:
        return self.labels[container_id], ""

    def image_labels(self, image: str) -> dict[str, str]:
        return {}


class FakeEtcd:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def snapshot(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        out = {}
        for rec in self.host.endpoints.networks.values():
            out[records.vni_key(rec.vni)] = rec.name.encode()
            out[records.network_key(rec.name)] = rec.to_json().encode()
        return 1, {k: v for k, v in out.items() if k == prefix}


class NoPorts(Publisher):
    def __init__(self) -> None:
        super().__init__()
        self.programmed: dict[str, tuple[str, dict[str, Any]]] = {}

    def program(self, endpoint_id: str, ip: str, options: dict[str, Any]) -> None:
        self.programmed[endpoint_id] = (ip, options)

    def revoke(self, endpoint_id: str) -> None:
        self.programmed.pop(endpoint_id, None)


class Plugin:
    def __init__(self, tmp: str, label_wait: float = 5) -> None:
        host = self.host = FakeHost()
        allocator = host.allocator = OwnerAllocator(host.info.name)
        host.service = CniService(
            host=host.info, endpoints=host.endpoints, network_records=host.endpoints,
            ports=host.ports, flows=host.flows, allocator=allocator, gateways=host.gateways,
            networks=host.networks, subnets=host.networks, links=host.links)
        self.daemon = FakeDaemon()
        networks = Networks(self.daemon, "ovs")  # type: ignore[arg-type]
        attacher, detacher = host.service.attacher_for(host.links)
        self.ports = NoPorts()
        endpoints = EndpointFiles(tmp)
        labels = ContainerLabels(daemon=self.daemon, store=host.endpoints, host="host1",
                                 prefix="overlay.label/", wait=label_wait,
                                 joined=lambda endpoint_id: endpoints.get(endpoint_id) is not None)
        self.driver = NetworkDriver(networks=networks, etcd=FakeEtcd(self.host),
                                    network_records=self.host.endpoints, attacher=attacher,
                                    detacher=detacher, endpoints=endpoints,
                                    publisher=self.ports, labels=labels, bridge="br-int")
        self.routes = {
            **IpamDriver(networks=networks, allocator=allocator, holders=allocator,
                         host="host1", bridge="br-int").routes(),
            **self.driver.routes()}

    def call(self, verb: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        return protocol.dispatch(self.routes, "/" + verb, raw)

    def ok(self, verb: str, body: Any = None) -> dict[str, Any]:
        status, answer = self.call(verb, body)
        assert status == 200, answer
        return answer

    def err(self, verb: str, body: Any = None) -> str:
        status, answer = self.call(verb, body)
        assert status == 500 and set(answer) == {"Err"}, (status, answer)
        return str(answer["Err"])

    def create(self, vni: int = 42, subnet: str = "10.0.0.0/24", **extra: Any) -> dict[str, Any]:
        body = {"NetworkID": NET_ID, "Options": {"com.docker.network.generic":
                                                 {"vxlanID": str(vni)}},
                "IPv4Data": [{"AddressSpace": "overlay", "Pool": subnet,
                              "Gateway": "10.0.0.1/24"}], "IPv6Data": [], **extra}
        return body

    def attach(self, address: str = "") -> str:
        """RequestAddress, CreateEndpoint, Join, as libnetwork orders them: the address."""
        got = self.ok("IpamDriver.RequestAddress", {
            "PoolID": "10.0.0.0/24", "Address": address,
            "Options": {"com.docker.network.endpoint.macaddress": MAC}})["Address"]
        self.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                                 "Interface": {"Address": got,
                                                               "MacAddress": MAC}})
        return str(got)


@pytest.fixture
def plugin(tmp_path: Any) -> Plugin:
    p = Plugin(str(tmp_path))
    p.daemon.add("my-net", 42, "10.0.0.0/24")
    return p


def test_activate_capabilities_and_address_spaces(plugin: Plugin) -> None:
    assert plugin.ok("NetworkDriver.GetCapabilities") == {"Scope": "local",
                                                          "ConnectivityScope": "global"}
    assert plugin.ok("IpamDriver.GetCapabilities")["RequiresMACAddress"] is True
    spaces = plugin.ok("IpamDriver.GetDefaultAddressSpaces")
    assert spaces["LocalDefaultAddressSpace"] == "overlay"


def test_pool_is_the_subnet_and_carries_the_gateway(plugin: Plugin) -> None:
    answer = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "overlay",
                                                  "Pool": "10.0.0.0/24"})
    assert answer == {"PoolID": "10.0.0.0/24", "Pool": "10.0.0.0/24",
                      "Data": {"com.docker.network.gateway": "10.0.0.1/24"}}


@pytest.mark.parametrize(("body", "says"), [
    ({"Pool": "10.0.0.0/24", "V6": True}, "IPv6"),
    ({"Pool": ""}, "--subnet"),
    ({"Pool": "10.0.0.0/24", "SubPool": "10.0.0.0/25"}, "--ip-range"),
    ({"Pool": "10.0.0.0/24", "Options": {"x": "1"}}, "--ipam-opt"),
    ({"Pool": "10.0.0.1/24"}, "not an IPv4 subnet"),
    ({"Pool": "10.0.0.0/31"}, "too small"),
    ({"Pool": "10.0.0.0/24", "AddressSpace": "LocalDefault"}, "address space"),
])
def test_pool_requests_it_cannot_serve_are_refused_saying_why(plugin: Plugin,
                                                              body: dict[str, Any],
                                                              says: str) -> None:
    assert says in plugin.err("IpamDriver.RequestPool", body)


def test_create_network_records_it_in_etcd_under_the_daemons_name(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", plugin.create())
    deadline = time.monotonic() + 10
    while "my-net" not in plugin.host.endpoints.networks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert plugin.host.endpoints.networks["my-net"] == NetworkRecord("my-net", 42,
                                                                     "10.0.0.0/24")


@pytest.mark.parametrize(("change", "says"), [
    ({"Options": {"com.docker.network.generic": {"vxlanID": "42", "mtu": "1400"}}},
     "unsupported driver option(s) mtu"),
    ({"Options": {"com.docker.network.generic": {}}}, "vxlanID"),
    ({"Options": {"com.docker.network.generic": {"vxlanID": "0"}}}, "from 1 to 16777215"),
    ({"Options": {"com.docker.network.generic": {"vxlanID": "42"},
                  "com.docker.network.enable_ipv6": True}}, "--ipv6"),
    ({"Options": {"com.docker.network.generic": {"vxlanID": "42"},
                  "com.docker.network.internal": True}}, "--internal"),
    ({"IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.0.0.0/24"}]},
     "--ipam-driver ovs"),
    ({"IPv4Data": []}, "one --subnet"),
    ({"IPv6Data": [{"AddressSpace": "overlay", "Pool": "fd00::/64"}]}, "IPv6"),
    ({"IPv4Data": [{"AddressSpace": "overlay", "Pool": "10.0.0.0/24",
                    "AuxAddresses": {"a": "10.0.0.5"}}]}, "--aux-address"),
    ({"NetworkID": "../../etc"}, "not a Docker ID"),
])
def test_create_network_refuses_what_it_cannot_do(plugin: Plugin, change: dict[str, Any],
                                                  says: str) -> None:
    plugin.daemon.nets.clear()  # not this daemon's network yet
    assert says in plugin.err("NetworkDriver.CreateNetwork", {**plugin.create(), **change})
    assert not plugin.host.endpoints.networks


def test_a_vni_etcd_gives_another_subnet_is_refused_naming_both(plugin: Plugin) -> None:
    plugin.daemon.nets.clear()
    plugin.host.endpoints.networks["my-net"] = NetworkRecord("my-net", 42, "10.0.0.0/24")
    err = plugin.err("NetworkDriver.CreateNetwork", plugin.create(subnet="10.9.0.0/24"))
    assert "vxlanID 42 is network 'my-net'" in err and "10.0.0.0/24" in err
    assert "10.9.0.0/24" in err


def test_a_second_network_of_the_same_subnet_on_one_host_is_refused(plugin: Plugin) -> None:
    err = plugin.err("NetworkDriver.CreateNetwork", {**plugin.create(vni=43),
                                                     "NetworkID": "c" * 64})
    assert "this Docker host has network my-net" in err


def test_join_attaches_with_the_cni_steps_and_leave_removes_everything(plugin: Plugin) -> None:
    address = plugin.attach()
    assert address == "10.0.0.2/24"
    joined = plugin.ok("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                              "SandboxKey": SANDBOX, "Options": {}})
    assert joined["Gateway"] == "10.0.0.1"
    assert joined["InterfaceName"]["DstPrefix"] == "eth"
    [rec] = plugin.host.endpoints.records.values()
    assert (rec.container_id, rec.ips, rec.mac, rec.netns) == (
        container_id_for(MAC), ["10.0.0.2/24"], MAC, SANDBOX)
    assert plugin.host.ports.ports_ and plugin.host.flows.local
    plugin.ok("NetworkDriver.ProgramExternalConnectivity", {
        "NetworkID": NET_ID, "EndpointID": EP_ID, "Options": {}})
    assert plugin.ports.programmed[EP_ID][0] == "10.0.0.2"
    plugin.ok("NetworkDriver.Leave", {"NetworkID": NET_ID, "EndpointID": EP_ID})
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET_ID, "EndpointID": EP_ID})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": "10.0.0.0/24", "Address": address})
    left = plugin.host.leftovers()
    left.pop("networks")  # the network record stays while Docker has the network
    assert not any(left.values()), left
    assert not plugin.ports.programmed


def test_join_returns_at_once_and_the_containers_labels_follow(plugin: Plugin) -> None:
    plugin.daemon.answer.clear()  # the daemon answers nothing until the container runs
    plugin.attach()
    started = time.monotonic()
    plugin.ok("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                     "SandboxKey": SANDBOX, "Options": {}})
    assert time.monotonic() - started < 2  # Join does not wait for the labels
    [rec] = plugin.host.endpoints.records.values()
    assert rec.labels == {}
    plugin.daemon.holders[EP_ID] = "c" * 64
    plugin.daemon.labels["c" * 64] = {"overlay.label/app": "web", "maintainer": "me"}
    plugin.daemon.answer.set()

    def labels() -> dict[str, str]:
        [rec] = plugin.host.endpoints.records.values()
        return rec.labels
    deadline = time.monotonic() + 5
    while labels() != {"app": "web"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert labels() == {"app": "web"}


def test_driver_option_labels_are_on_the_record_from_join_and_win(plugin: Plugin) -> None:
    got = plugin.ok("IpamDriver.RequestAddress", {
        "PoolID": "10.0.0.0/24", "Options": {"com.docker.network.endpoint.macaddress": MAC}})
    plugin.daemon.answer.clear()  # the container's labels come later
    plugin.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET_ID, "EndpointID": EP_ID,
        "Interface": {"Address": got["Address"], "MacAddress": MAC},
        "Options": {"overlay.label/app": "web", "overlay.label/Bad_": "x",
                    "com.docker.network.endpoint.macaddress": MAC}})
    plugin.ok("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                     "SandboxKey": SANDBOX, "Options": {}})
    [rec] = plugin.host.endpoints.records.values()
    assert rec.labels == {"app": "web"}  # at Join: no window
    plugin.daemon.holders[EP_ID] = "c" * 64
    plugin.daemon.labels["c" * 64] = {"overlay.label/app": "db", "overlay.label/tier": "front"}
    plugin.daemon.answer.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and \
            next(iter(plugin.host.endpoints.records.values())).labels == {"app": "web"}:
        time.sleep(0.02)
    assert next(iter(plugin.host.endpoints.records.values())).labels == {"app": "web",
                                                                        "tier": "front"}


def test_endpoints_joined_before_a_restart_are_labelled_at_start(tmp_path: Any) -> None:
    plugin = Plugin(str(tmp_path), label_wait=0.2)
    plugin.daemon.add("my-net", 42, "10.0.0.0/24")
    plugin.attach()
    plugin.ok("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                     "SandboxKey": SANDBOX, "Options": {}})
    time.sleep(0.5)  # the daemon never listed the container: Join's labeller gave up
    [rec] = plugin.host.endpoints.records.values()
    assert rec.labels == {}
    plugin.daemon.holders[EP_ID] = "c" * 64  # the daemon answers again, after an agent restart
    plugin.daemon.labels["c" * 64] = {"overlay.label/app": "web"}
    plugin.driver.label_joined()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and \
            next(iter(plugin.host.endpoints.records.values())).labels != {"app": "web"}:
        time.sleep(0.02)
    assert next(iter(plugin.host.endpoints.records.values())).labels == {"app": "web"}


def test_a_static_address_is_the_one_requested(plugin: Plugin) -> None:
    assert plugin.attach("10.0.0.77") == "10.0.0.77/24"


def test_a_failed_join_leaves_nothing_and_says_why(plugin: Plugin) -> None:
    address = plugin.attach()
    plugin.host.flows.fail("install_endpoint", CniError(Code.OVS_FAILURE, "switch is down"))
    err = plugin.err("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                            "SandboxKey": SANDBOX})
    assert "switch is down" in err
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET_ID, "EndpointID": EP_ID})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": "10.0.0.0/24", "Address": address})
    left = plugin.host.leftovers()
    left.pop("networks")
    assert not any(left.values()), left


def test_an_address_the_ipam_did_not_give_is_refused(plugin: Plugin) -> None:
    err = plugin.err("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET_ID, "EndpointID": EP_ID,
        "Interface": {"Address": "10.0.0.5/24", "MacAddress": MAC}})
    assert "--ipam-driver ovs" in err


def test_join_of_an_unknown_endpoint_is_refused(plugin: Plugin) -> None:
    err = plugin.err("NetworkDriver.Join", {"NetworkID": NET_ID, "EndpointID": EP_ID,
                                            "SandboxKey": SANDBOX})
    assert "recreate the container" in err


@pytest.mark.parametrize("ip", ["10.0.0.0", "10.0.0.1", "10.0.0.255"])
def test_an_address_no_container_gets_is_refused_before_it_is_allocated(plugin: Plugin,
                                                                        ip: str) -> None:
    err = plugin.err("IpamDriver.RequestAddress", {
        "PoolID": "10.0.0.0/24", "Address": ip,
        "Options": {"com.docker.network.endpoint.macaddress": MAC}})
    assert f"--ip {ip} is the network, gateway or broadcast address" in err
    assert not plugin.host.allocator.held.get("my-net")


def test_an_aux_address_is_refused(plugin: Plugin) -> None:
    err = plugin.err("IpamDriver.RequestAddress", {"PoolID": "10.0.0.0/24",
                                                   "Address": "10.0.0.5", "Options": {}})
    assert "--aux-address" in err


def test_a_gateway_other_than_the_first_address_is_refused(plugin: Plugin) -> None:
    err = plugin.err("IpamDriver.RequestAddress", {
        "PoolID": "10.0.0.0/24", "Address": "10.0.0.254",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert "10.0.0.1" in err
    assert plugin.ok("IpamDriver.RequestAddress", {
        "PoolID": "10.0.0.0/24", "Address": "10.0.0.1",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"] == \
        "10.0.0.1/24"


def test_an_address_for_a_pool_of_no_ovs_network_is_refused(plugin: Plugin) -> None:
    err = plugin.err("IpamDriver.RequestAddress", {
        "PoolID": "10.5.0.0/24", "Options": {"com.docker.network.endpoint.macaddress": MAC}})
    assert "no network of driver ovs" in err


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "zz", 7])
def test_bad_macs_are_refused(plugin: Plugin, mac: object) -> None:
    err = plugin.err("IpamDriver.RequestAddress", {
        "PoolID": "10.0.0.0/24", "Options": {"com.docker.network.endpoint.macaddress": mac}})
    assert "MAC" in err


def test_release_leaves_an_address_another_owner_holds(plugin: Plugin) -> None:
    allocator = plugin.host.allocator
    ip = ipaddress.ip_address("10.0.0.9")
    allocator.held["my-net"] = {ip: Holder("cni-container/eth0", "host1")}
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": "10.0.0.0/24", "Address": "10.0.0.9/24"})
    assert ip in allocator.held["my-net"]


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/NetworkDriver.Nope", b"{}", 404, "not a verb"),
    ("/NetworkDriver.Join", b"{not json", 500, "not JSON"),
    ("/NetworkDriver.Join", b"[1, 2]", 500, "JSON object"),
    ("/NetworkDriver.Join", b"[" * 100000, 500, "not JSON"),
    ("/NetworkDriver.Join", json.dumps({"NetworkID": 5}).encode(), 500, "must be a string"),
])
def test_bad_requests_get_dockers_error_form(plugin: Plugin, path: str, body: bytes,
                                             status: int, says: str) -> None:
    got, answer = protocol.dispatch(plugin.routes, path, body)
    assert got == status and set(answer) == {"Err"} and says in answer["Err"]


def test_an_unexpected_failure_is_an_error_without_a_traceback() -> None:
    def broken(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")
    status, answer = protocol.dispatch({"/X": broken}, "/X", b"{}")
    assert status == 500
    assert answer["Err"].startswith("internal error in the overlay plugin: KeyError")
    assert "Traceback" not in answer["Err"]
