"""Issue 15, point 4, as attacks on a 2-host lab through the real plugin, agents and etcd: a
network whose subnet would break its host is refused with code 7 naming the overlap, and
leaves nothing behind; the host keeps its underlay route, etcd and tunnels; the DEL a runtime
sends after the failed ADD succeeds; a route the agent did not create is never replaced.

Reproduced before the fix: ADD of a network on the lab's underlay subnet (172.31.0.0/24)
succeeded, gave a container host1's VTEP, made host0's own address its gateway and replaced
host0's connected underlay route: host0 lost etcd and every tunnel, and the DEL failed (11).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import Cni, host_snapshot, with_c0_and_c1


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


def etcdctl(lab: Lab, *args: str) -> str:
    return run(lab.etcdctl(*args), netns=lab.underlay_ns).stdout


def host_routes(h: LabHost) -> list[str]:
    return [line.strip() for line in run(["ip", "route", "show"], netns=h.netns).stdout
            .splitlines()]


def refused(lab: Lab, netns: str, *, name: str, vni: int, subnet: str,
            words: list[str], container_id: str = "attack-1") -> dict[str, Any]:
    """ADD on host0 of network `name` with `subnet`: code 7 naming every phrase of `words`,
    nothing left behind, and the DEL after it succeeds."""
    cni, h = Cni(lab), lab.host("host0")
    conf = cni.netconf(h, name=name, vxlanID=vni, ipam={"type": "overlay", "subnet": subnet})
    before = host_snapshot(lab, h, netns)
    routes = host_routes(h)
    out = cni("ADD", conf, container_id=container_id, netns=netns)
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    err: dict[str, Any] = out.json()
    assert err["code"] == 7, err
    for phrase in words:
        assert phrase in err["msg"], err
    # No allocation, veth, port, endpoint or network record, no gateway port or route.
    assert host_snapshot(lab, h, netns) == before
    assert host_routes(h) == routes
    # The runtime's DEL after a failed ADD: nothing to undo, and it says so with success.
    out = cni("DEL", conf, container_id=container_id, netns=netns)
    assert out.returncode == 0, out.stdout + out.stderr
    return err


def still_healthy(lab: Lab) -> None:
    """host0 keeps its underlay route, its etcd and its tunnels."""
    h0 = lab.host("host0")
    assert "172.31.0.0/24 dev br-phy proto kernel scope link src 172.31.0.1" in host_routes(h0)
    info = ctr_status(h0)
    assert info["etcd_connected"] is True, info
    c0, c1 = lab.containers["c0"], lab.containers["c1"]
    assert ctr.ping(c0["netns"], c1["ip"]).complete
    assert ctr.ping(c1["netns"], c0["ip"]).complete


def ctr_status(h: LabHost) -> dict[str, Any]:
    from overlay.cli.overlayctl import status  # gRPC only here
    return status(h.socket)


def test_network_on_the_underlay_subnet_is_refused(lab: Lab, netns: str) -> None:
    err = refused(lab, netns, name="underlay-net", vni=77, subnet="172.31.0.0/24", words=[
        "subnet 172.31.0.0/24 overlaps the underlay network 172.31.0.0/24 of interface br-phy",
        "subnet 172.31.0.0/24 overlaps the VTEP 172.31.0.2 of host host1",
        f"subnet 172.31.0.0/24 overlaps the etcd endpoint {lab.etcd_url}",
        "choose a subnet that overlaps none of these"])
    assert "the VTEP 172.31.0.1 of host host0" in err["msg"]
    still_healthy(lab)


def test_an_existing_network_on_the_underlay_is_refused_here_too(lab: Lab, netns: str) -> None:
    # Created in etcd beforehand (`overlayctl network-create` cannot know any host's
    # underlay); the first ADD that would bring it to host0 is refused, and the record, which
    # this ADD did not create, stays.
    ctr.define_network(lab, "ul-half", 78, "172.31.0.0/25")
    assert etcdctl(lab, "get", "/overlay/v1/networks/ul-half", "--print-value-only").strip()
    refused(lab, netns, name="ul-half", vni=78, subnet="172.31.0.0/25",
            words=["subnet 172.31.0.0/25 overlaps the underlay network 172.31.0.0/24 of "
                   "interface br-phy"])
    assert etcdctl(lab, "get", "/overlay/v1/networks/ul-half", "--print-value-only").strip()
    still_healthy(lab)


@pytest.fixture
def ghost(lab: Lab) -> Iterator[str]:
    """A host record with a VTEP outside every network of host0 (192.168.77.5), and one
    endpoint of it in my-net, so that host0's remote endpoint count shows when its agent has
    learnt that host."""
    host_key, ep_key = "/overlay/v1/hosts/ghost", "/overlay/v1/endpoints/my-net/ghost-1/eth0"
    before = int(ctr_status(lab.host("host0"))["remote_endpoints"])
    etcdctl(lab, "put", host_key, json.dumps({"host": "ghost", "vtep": "192.168.77.5",
                                              "datapath": "system"}))
    etcdctl(lab, "put", ep_key, json.dumps({
        "network": "my-net", "container_id": "ghost-1", "ifname": "eth0", "host": "ghost",
        "vni": 42, "ips": ["10.0.0.200/24"], "mac": "0a:58:0a:00:00:c8", "port": "ovlghost",
        "netns": "/var/run/netns/ghost", "mtu": 1450, "routes": [], "ipam": "overlay",
        "vtep": "192.168.77.5"}))
    steps.wait_for(lambda: int(ctr_status(lab.host("host0"))["remote_endpoints"]) > before,
                   "host0 to learn the ghost host", 20)
    yield "192.168.77.5"
    etcdctl(lab, "del", ep_key)
    etcdctl(lab, "del", host_key)


def test_network_covering_a_vtep_is_refused(lab: Lab, netns: str, ghost: str) -> None:
    refused(lab, netns, name="vtep-net", vni=79, subnet="192.168.77.0/24",
            words=[f"subnet 192.168.77.0/24 overlaps the VTEP {ghost} of host ghost"])
    still_healthy(lab)


@pytest.fixture
def operator_route(lab: Lab) -> Iterator[Callable[[str], None]]:
    """Routes an operator adds on host0 (`ip route add`: proto boot), removed afterwards."""
    added: list[str] = []
    h0 = lab.host("host0")

    def add(dst: str) -> None:
        run(["ip", "route", "add", dst, "via", "172.31.0.254", "dev", "br-phy"], netns=h0.netns)
        added.append(dst)
    yield add
    for dst in added:
        run(["ip", "route", "del", dst], netns=h0.netns, check=False)


def test_network_inside_a_host_route_not_ours_is_refused(
        lab: Lab, netns: str, operator_route: Callable[[str], None]) -> None:
    operator_route("10.77.0.0/16")
    refused(lab, netns, name="route-net", vni=80, subnet="10.77.1.0/24", words=[
        "subnet 10.77.1.0/24 overlaps the host route 10.77.0.0/16 via 172.31.0.254 dev br-phy "
        "proto 3"])
    assert "10.77.0.0/16 via 172.31.0.254 dev br-phy" in host_routes(lab.host("host0"))
    still_healthy(lab)


def test_a_host_route_not_ours_is_never_replaced(
        lab: Lab, netns: str, operator_route: Callable[[str], None]) -> None:
    # Exactly the route a gateway of 10.78.0.0/24 would add to the main table. Before the fix
    # the ADD succeeded and `replace`d it with "10.78.0.0/24 dev ovg81".
    operator_route("10.78.0.0/24")
    h0 = lab.host("host0")
    mine = [r for r in host_routes(h0) if r.startswith("10.78.0.0/24")]
    assert mine == ["10.78.0.0/24 via 172.31.0.254 dev br-phy"]
    refused(lab, netns, name="same-route-net", vni=81, subnet="10.78.0.0/24", words=[
        "subnet 10.78.0.0/24 overlaps the host route 10.78.0.0/24 via 172.31.0.254 dev br-phy"])
    assert [r for r in host_routes(h0) if r.startswith("10.78.0.0/24")] == mine
    still_healthy(lab)


def test_a_clean_subnet_still_works_and_its_routes_are_marked_ours(lab: Lab) -> None:
    """The check refuses overlaps only: a network on a free subnet gets its gateway, whose
    route is marked proto 79, and its last DEL takes that route along."""
    ctr.define_network(lab, "clean-net", 82, "10.82.0.0/24")
    out = ctr.add_container(lab, "c2", "host0", network="clean-net")
    assert out.returncode == 0, out.stdout
    h0 = lab.host("host0")
    assert "10.82.0.0/24 dev ovg82 proto 79 scope link" in host_routes(h0)
    assert ctr.del_container(lab, "c2").returncode == 0
    assert not [r for r in host_routes(h0) if r.startswith("10.82.0.0/24")]
    assert not os.path.exists(f"/var/run/netns/{lab.prefix}-c2")
