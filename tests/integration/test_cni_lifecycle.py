"""ADD, CHECK and DEL through the real plugin, agent, OVS, etcd and netlink on one host."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def test_add_then_del_leaves_everything_as_before(lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    before = host_snapshot(lab, h, netns)

    added = cni("ADD", cni.netconf(h), container_id="life-1", netns=netns)
    assert added.returncode == 0, added.stdout
    result = added.json()
    ip = result["ips"][0]["address"]
    during = host_snapshot(lab, h, netns)
    assert during != before
    # The container side: name, address, MTU = underlay 1500 - 50, TX checksum offload off.
    inside = run(["ip", "-j", "addr", "show", "eth0"], netns=netns.rsplit("/", 1)[1]).stdout
    link = json.loads(inside)[0]
    assert link["mtu"] == 1450
    assert f"{link['addr_info'][0]['local']}/{link['addr_info'][0]['prefixlen']}" == ip
    assert link["address"] == result["interfaces"][1]["mac"]
    offload = run(["ethtool", "-k", "eth0"], netns=netns.rsplit("/", 1)[1]).stdout
    assert "tx-checksumming: off" in offload
    # The host side: an OVS port on br-int with external_ids naming the container.
    host_if = result["interfaces"][0]["name"]
    ids = run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "get", "Interface", host_if,
               "external_ids"]).stdout
    for expected in ('overlay-container-id=life-1', 'overlay-ifname=eth0',
                     f'overlay-netns="{netns}"', 'overlay-network=my-net'):
        assert expected in ids
    # The control plane: endpoint record and IP allocation.
    keys = during["etcd"]
    assert "/overlay/v1/endpoints/my-net/life-1/eth0" in keys
    assert f"/overlay/v1/ipam/my-net/{ip.split('/')[0]}" in keys

    checked = cni("CHECK", cni.netconf(h), container_id="life-1", netns=netns)
    assert checked.returncode == 0, checked.stdout

    deleted = cni("DEL", cni.netconf(h), container_id="life-1", netns=netns)
    assert deleted.returncode == 0, deleted.stdout
    assert host_snapshot(lab, h, netns) == before


def test_del_twice_and_del_of_unknown_container_succeed(lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    assert cni("ADD", cni.netconf(h), container_id="life-2", netns=netns).returncode == 0
    for _ in range(2):
        out = cni("DEL", cni.netconf(h), container_id="life-2", netns=netns)
        assert out.returncode == 0 and out.stdout == ""
    never = cni("DEL", cni.netconf(h), container_id="never-added", netns="/var/run/netns/gone")
    assert never.returncode == 0, never.stdout


def test_check_names_what_is_missing(lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    assert cni("ADD", cni.netconf(h), container_id="life-3", netns=netns).returncode == 0
    run(["ip", "link", "set", "eth0", "down"], netns=netns.rsplit("/", 1)[1])
    out = cni("CHECK", cni.netconf(h), container_id="life-3", netns=netns)
    assert out.returncode != 0
    assert out.json()["code"] == 106 and "interface is down" in out.json()["msg"]
    unknown = cni("CHECK", cni.netconf(h), container_id="nobody", netns=netns)
    assert unknown.json()["code"] == 3
    assert cni("DEL", cni.netconf(h), container_id="life-3", netns=netns).returncode == 0


def test_second_add_for_the_same_interface_is_refused_and_harmless(lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    first = cni("ADD", cni.netconf(h), container_id="life-4", netns=netns)
    assert first.returncode == 0
    snap = host_snapshot(lab, h, netns)
    again = cni("ADD", cni.netconf(h), container_id="life-4", netns=netns)
    assert again.returncode != 0 and again.json()["code"] == 107
    assert host_snapshot(lab, h, netns) == snap  # the refusal rolled nothing of the first back
    assert cni("CHECK", cni.netconf(h), container_id="life-4", netns=netns).returncode == 0
    assert cni("DEL", cni.netconf(h), container_id="life-4", netns=netns).returncode == 0


def test_del_after_the_netns_is_gone_still_frees_everything(lab: Lab) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    before = host_snapshot(lab, h)
    name = f"{lab.prefix}-gone"
    add_netns(name)
    assert cni("ADD", cni.netconf(h), container_id="life-5",
               netns=f"/var/run/netns/{name}").returncode == 0
    del_netns(name)  # the runtime lost the container before it called DEL
    out = cni("DEL", cni.netconf(h), container_id="life-5", netns=f"/var/run/netns/{name}")
    assert out.returncode == 0, out.stdout
    assert host_snapshot(lab, h) == before
