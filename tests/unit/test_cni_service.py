"""ADD's rollback at every step, DEL, CHECK, STATUS and GC of the CNI service, on the fakes of
overlay/cni/testing.py (no root, no OVS, no etcd). The root integration tests
(tests/integration/test_cni_lifecycle.py and friends) run the same verbs on the real pieces."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from typing import Any

import pytest

from overlay.cni.netconf import CniEnv, NetConf, parse_netconf
from overlay.cni.testing import FakeHost, Faulty
from overlay.errors import CniError, Code
from overlay.netlink import veth
from overlay.store.records import EndpointRecord, Holder


def netconf(name: str = "net", vni: int = 7, subnet: str = "10.7.0.0/24",
            **extra: Any) -> NetConf:
    return parse_netconf(json.dumps({
        "cniVersion": "1.1.0", "name": name, "type": "ovs", "bridge": "br-int", "vxlanID": vni,
        "ipam": {"type": "overlay", "subnet": subnet}, **extra}).encode())


CONF = netconf()


def env(container_id: str = "c0", command: str = "ADD") -> CniEnv:
    return CniEnv(command, container_id, f"/var/run/netns/{container_id}", "eth0")


def add(host: FakeHost, container_id: str = "c0", conf: NetConf = CONF) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(host.service.add(env(container_id), conf))
    return result


def attachment_gone(host: FakeHost, container_id: str = "c0", network: str = "net") -> None:
    """Nothing of the attachment is left: record, addresses, port, flows, gateway, link."""
    port = veth.hostside_name(container_id, "eth0")
    key = f"{network}/{container_id}/eth0"
    assert (network, container_id, "eth0") not in host.endpoints.records
    assert all(h.owner != f"{container_id}/eth0" for h in host.allocator.held.get(network,
                                                                                   {}).values())
    assert port not in host.ports.ports_
    assert not any(k.endswith(f"/{container_id}/eth0") for k in host.flows.local)
    assert not any(k.endswith(f"/{container_id}/eth0") for k in host.gateways.users), key
    assert port not in host.links.links


# --- ADD ------------------------------------------------------------------------------------------

def test_add_makes_every_piece_of_the_attachment() -> None:
    host = FakeHost()
    result = add(host)
    assert result["ips"][0]["address"] == "10.7.0.2/24"
    port = veth.hostside_name("c0", "eth0")
    rec = host.endpoints.records[("net", "c0", "eth0")]
    assert (rec.host, rec.port, rec.ips, rec.vtep) == ("host1", port, ["10.7.0.2/24"],
                                                       "192.0.2.1")
    assert host.ports.ports_[port].external_ids  # names the attachment (portschema)
    assert host.flows.local["net/c0/eth0"].ips == ("10.7.0.2",)
    assert set(host.gateways.users) == {"net/c0/eth0"}
    assert host.networks.joined == {"net"} and "net" in host.endpoints.networks
    assert host.service.check(env(), CONF) == b""


# Every step of ADD, failing in turn: before it does anything, and (where a step can fail
# half-way: a row written, then OVS cannot attach the interface) after it did its work.
STEPS = [(port, verb, after) for port, verb, halfway in [
    ("networks", "check", False),  # the subnet guard, before anything exists
    ("endpoints", "get_endpoint", False),
    ("endpoints", "ensure_network", False),
    ("allocator", "allocate", True),
    ("links", "create_container_link", True),
    ("ports", "ensure_port", True),
    ("endpoints", "put_endpoint", True),
    ("networks", "join", False),
    ("gateways", "acquire", True),
    ("flows", "install_endpoint", True),
] for after in ((False, True) if halfway else (False,))]


@pytest.mark.parametrize(("port", "verb", "after"), STEPS)
def test_a_failed_add_leaves_nothing_behind(port: str, verb: str, after: bool) -> None:
    host = FakeHost()
    faulty: Faulty = getattr(host, port)
    injected = CniError(Code.OVS_FAILURE, f"{verb} broke")
    faulty.fail(verb, injected, after=after)
    with pytest.raises(CniError) as err:
        add(host)
    assert err.value is injected  # the runtime sees the failure, not a rollback's
    assert verb in faulty.calls  # the step was reached
    attachment_gone(host)
    assert host.leftovers() == {"records": {}, "networks": {}, "allocations": {}, "ports": {},
                                "flows": {}, "gateway users": {}, "links": {}}
    faulty.heal()  # and the runtime's retry succeeds
    add(host)
    assert host.service.check(env(), CONF) == b""


def test_a_failed_add_leaves_the_other_containers_of_its_network_alone() -> None:
    host = FakeHost()
    add(host, "c1")
    host.flows.fail("install_endpoint")
    with pytest.raises(CniError):
        add(host, "c2")
    attachment_gone(host, "c2")
    assert "net" in host.endpoints.networks  # c1 still uses the network
    assert set(host.gateways.users) == {"net/c1/eth0"}
    assert host.service.check(env("c1"), CONF) == b""


def test_the_flows_follow_the_ofport_ovs_gave_when_not_the_one_asked_for() -> None:
    # ADD installs the flows with the number it asked for while OVS attaches the port
    # (Attacher._link_and_port); OVS may give another one, which the flows must then use.
    host = FakeHost()
    host.ports.instead_of_request = 4242
    add(host)
    port = veth.hostside_name("c0", "eth0")
    assert host.ports.ports_[port].ofport == 4242
    assert host.flows.in_switch["net/c0/eth0"].ofport == 4242


def test_each_add_asks_for_an_ofport_of_its_own() -> None:
    host = FakeHost()
    add(host, "c0")
    add(host, "c1")
    ofports = {host.flows.local[f"net/{c}/eth0"].ofport for c in ("c0", "c1")}
    assert len(ofports) == 2
    assert ofports == {host.ports.ports_[veth.hostside_name(c, "eth0")].ofport
                       for c in ("c0", "c1")}


def test_add_of_an_attached_container_is_refused_and_keeps_it() -> None:
    host = FakeHost()
    add(host)
    with pytest.raises(CniError) as err:
        add(host)
    assert err.value.code is Code.ALREADY_ATTACHED and err.value.msg.endswith("already attached")
    assert host.service.check(env(), CONF) == b""


def test_add_of_a_container_recorded_on_another_host_names_it_and_makes_nothing() -> None:
    host = FakeHost()
    theirs = EndpointRecord(network="net", container_id="c0", ifname="eth0", host="host0",
                            vni=7, ips=["10.7.0.9/24"], mac="0a:58:0a:07:00:09", port="p",
                            netns="/x")
    host.endpoints.records[("net", "c0", "eth0")] = theirs
    with pytest.raises(CniError) as err:
        add(host)
    assert err.value.code is Code.ALREADY_ATTACHED and "on host host0" in err.value.msg
    assert host.endpoints.records == {("net", "c0", "eth0"): theirs}
    assert not host.ports.ports_ and not host.links.links and not host.allocator.held


def test_add_on_another_bridge_is_refused() -> None:
    host = FakeHost()
    with pytest.raises(CniError) as err:
        host.service.add(env(), replace(CONF, bridge="br-other"))
    assert err.value.code is Code.INVALID_NETCONF and "br-other" in err.value.msg


# --- DEL ------------------------------------------------------------------------------------------

def test_del_removes_everything_and_is_idempotent() -> None:
    host = FakeHost()
    add(host)
    assert host.service.delete(env(command="DEL"), CONF) == b""
    attachment_gone(host)
    assert host.service.delete(env(command="DEL"), CONF) == b""  # nothing left: still fine
    assert host.service.delete(env("never", "DEL"), CONF) == b""
    assert {k: v for k, v in host.leftovers().items() if k != "networks"} == {
        "records": {}, "allocations": {}, "ports": {}, "flows": {}, "gateway users": {},
        "links": {}}


def test_del_leaves_another_hosts_record_alone() -> None:
    host = FakeHost()
    theirs = EndpointRecord(network="net", container_id="c0", ifname="eth0", host="host0",
                            vni=7, ips=["10.7.0.9/24"], mac="0a:58:0a:07:00:09", port="p",
                            netns="/x")
    host.endpoints.records[("net", "c0", "eth0")] = theirs
    assert host.service.delete(env(command="DEL"), CONF) == b""
    assert host.endpoints.records == {("net", "c0", "eth0"): theirs}


def test_del_for_another_network_does_not_cut_this_ones_port() -> None:
    host = FakeHost()
    add(host)
    other = netconf("other", 8, "10.8.0.0/24")
    assert host.service.delete(env(command="DEL"), other) == b""
    assert host.service.check(env(), CONF) == b""


def test_a_failed_del_still_releases_the_gateway_and_can_be_retried() -> None:
    host = FakeHost()
    add(host)
    host.ports.fail("delete_port")
    with pytest.raises(CniError):
        host.service.delete(env(command="DEL"), CONF)
    assert not host.gateways.users and not host.flows.local
    host.ports.heal()
    assert host.service.delete(env(command="DEL"), CONF) == b""
    attachment_gone(host)


# --- CHECK ----------------------------------------------------------------------------------------

PORT = veth.hostside_name("c0", "eth0")
DIFFERENCES = {
    "vni": (lambda h: h.endpoints.records.update({("net", "c0", "eth0"): replace(
        h.endpoints.records[("net", "c0", "eth0")], vni=8)}),
        "recorded vxlanID 8 differs from netconf 7"),
    "link": (lambda h: h.links.links.clear(), "interface eth0 is missing from /var/run/netns/c0"),
    "mac": (lambda h: h.links.change(PORT, mac="0a:58:00:00:00:99"),
            "MAC is 0a:58:00:00:00:99, expected 0a:58:0a:07:00:02"),
    "address": (lambda h: h.links.change(PORT, addresses=()),
                "address 10.7.0.2/24 is missing (has )"),
    "mtu": (lambda h: h.links.change(PORT, mtu=1400), "MTU is 1400, expected 1450"),
    "route": (lambda h: h.links.change(PORT, routes=frozenset()),
              "route to 0.0.0.0/0 via 10.7.0.1 is missing"),
    "down": (lambda h: h.links.change(PORT, up=False), "interface is down"),
    "port": (lambda h: h.ports.ports_.clear(), f"OVS port {PORT} is missing from br-int"),
    "flows": (lambda h: h.flows.in_switch.clear(),
              f"the flows of port {PORT} are not in the switch"),
    "gateway": (lambda h: h.gateways.broken.append("gateway ovg7 has no address"),
                "gateway ovg7 has no address"),
    "allocation": (lambda h: h.allocator.held.clear(),
                   "the IP allocation of 10.7.0.2 is not held by this container"),
}


@pytest.mark.parametrize("what", sorted(DIFFERENCES))
def test_check_reports_each_difference(what: str) -> None:
    host = FakeHost()
    add(host)
    change, sentence = DIFFERENCES[what]
    change(host)
    with pytest.raises(CniError) as err:
        host.service.check(env(command="CHECK"), CONF)
    assert err.value.code is Code.CHECK_FAILED
    assert err.value.msg.startswith("container c0 interface eth0 on net: ")
    assert sentence in err.value.msg.split(": ", 1)[1].split("; ")


def test_check_reports_a_prev_result_address_add_did_not_assign() -> None:
    host = FakeHost()
    add(host)
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0",
                                                   "sandbox": "/var/run/netns/c0"}],
            "ips": [{"address": "10.7.0.9/24", "interface": 0}]}
    with pytest.raises(CniError) as err:
        host.service.check(env(command="CHECK"), netconf(prevResult=prev))
    assert err.value.msg.endswith("prevResult lists 10.7.0.9/24 on eth0, which ADD did not "
                                  "assign")


def test_check_of_an_unknown_container_and_of_an_old_version() -> None:
    host = FakeHost()
    with pytest.raises(CniError) as err:
        host.service.check(env(command="CHECK"), CONF)
    assert err.value.code is Code.UNKNOWN_CONTAINER
    with pytest.raises(CniError) as err:
        host.service.check(env(command="CHECK"), replace(CONF, cni_version="0.3.1"))
    assert err.value.code is Code.INCOMPATIBLE_CNI_VERSION


# --- STATUS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("broken", "code"), [
    ("flows", Code.LIMITED_CONNECTIVITY), ("ports", Code.NOT_AVAILABLE),
    ("endpoints", Code.NOT_AVAILABLE)])
def test_status_says_what_cannot_be_reached(broken: str, code: Code) -> None:
    host = FakeHost()
    assert host.service.status(env(command="STATUS"), CONF) == b""
    host.flows.answers = broken != "flows"
    host.ports.is_connected = broken != "ports"
    host.endpoints.reachable = broken != "endpoints"
    with pytest.raises(CniError) as err:
        host.service.status(env(command="STATUS"), CONF)
    assert err.value.code is code


# --- GC -------------------------------------------------------------------------------------------

def gc_conf(*keep: str) -> NetConf:
    return netconf(**{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"}
                                                    for c in keep]})


def test_gc_removes_only_this_hosts_attachments_that_are_not_valid() -> None:
    host = FakeHost()
    for container_id in ("c1", "c2", "c3"):
        add(host, container_id)
    add(host, "c9", netconf("other", 8, "10.8.0.0/24"))  # another network: not GC's business
    theirs = EndpointRecord(network="net", container_id="c4", ifname="eth0", host="host0",
                            vni=7, ips=["10.7.0.50/24"], mac="0a:58:0a:07:00:32", port="p",
                            netns="/x")
    host.endpoints.records[("net", "c4", "eth0")] = theirs
    ip50 = ipaddress.ip_address("10.7.0.50")
    host.allocator.held["net"][ip50] = Holder("c4/eth0", "host0")
    # An allocation of this host that lost everything else (an ADD that died half-way).
    host.allocator.held["net"][ipaddress.ip_address("10.7.0.60")] = Holder("c5/eth0", "host1")
    assert host.service.gc(env(command="GC"), gc_conf("c1")) == b""
    for gone in ("c2", "c3", "c5"):
        attachment_gone(host, gone)
    assert host.service.check(env("c1"), CONF) == b""
    assert host.service.check(env("c9"), netconf("other", 8, "10.8.0.0/24")) == b""
    assert host.endpoints.records[("net", "c4", "eth0")] == theirs
    assert host.allocator.held["net"][ip50] == Holder("c4/eth0", "host0")
    assert sorted(host.flows.removed) == ["net/c2/eth0", "net/c3/eth0", "net/c5/eth0"]


def test_gc_without_valid_attachments_removes_nothing() -> None:
    host = FakeHost()
    add(host)
    assert host.service.gc(env(command="GC"), CONF) == b""
    assert host.service.check(env(), CONF) == b""


def test_gc_keeps_going_and_reports_every_failure() -> None:
    host = FakeHost()
    add(host, "c1")
    add(host, "c2")
    host.ports.fail("delete_port")
    with pytest.raises(CniError) as err:
        host.service.gc(env(command="GC"), gc_conf())
    assert err.value.msg == "GC of net failed for 2 of 2 stale attachments"
    assert not host.flows.local  # both were tried


# --- the Docker driver's attachments: no CNI runtime's ------------------------------------------

DOCKER_ID = "docker-02420a000063"  # what overlay/docker/ipam.py names a Docker endpoint


def test_gc_leaves_the_docker_drivers_attachments_alone() -> None:
    host = FakeHost()
    add(host, "c1")
    host.service.attacher.add(env(DOCKER_ID), CONF)  # as the driver's Join does
    # An address the driver holds between RequestAddress and Join: nothing else of it yet.
    waiting = ipaddress.ip_address("10.7.0.99")
    host.allocator.held["net"][waiting] = Holder("docker-02420a000099/eth", "host1")
    assert host.service.gc(env(command="GC"), gc_conf()) == b""  # no attachment is valid
    attachment_gone(host, "c1")
    assert host.service.check(env(DOCKER_ID), CONF) == b""  # record, port, flows, address
    assert host.allocator.held["net"][waiting] == Holder("docker-02420a000099/eth", "host1")


def test_cni_add_refuses_and_del_leaves_the_docker_drivers_container_ids() -> None:
    host = FakeHost()
    with pytest.raises(CniError) as err:
        add(host, "docker-1234")
    assert err.value.code is Code.INVALID_ENV
    assert "are the Docker driver's attachments" in err.value.msg
    assert not host.endpoints.records and not host.ports.ports_  # refused before anything
    host.service.attacher.add(env(DOCKER_ID), CONF)
    assert host.service.delete(env(DOCKER_ID, "DEL"), CONF) == b""
    assert host.service.check(env(DOCKER_ID), CONF) == b""  # still all there
