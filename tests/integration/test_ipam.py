"""IPAM through the real agent: several ranges, exclusions, routes, and delegation to Debian's
host-local and static plugins (the CNI spec's delegation: same stdin, same env, CNI_PATH)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, container_addresses, host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def conf_with(cni: Cni, lab: Lab, ipam: dict[str, Any], name: str = "my-net") -> dict[str, Any]:
    conf = cni.netconf(lab.hosts[0])
    conf.update(name=name, ipam=ipam)
    return conf


def test_ranges_in_order_exclusions_and_gateway(lab: Lab,
                                                 netns_factory: Callable[[], str]) -> None:
    cni = Cni(lab)
    conf = conf_with(cni, lab, {"type": "overlay", "ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.12",
         "gateway": "10.0.0.11"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.60"}]],
        "exclude": ["10.0.0.50/31"]})
    got = []
    spaces = [netns_factory() for _ in range(3)]
    for i, ns in enumerate(spaces):
        out = cni("ADD", conf, container_id=f"rng-{i}", netns=ns)
        assert out.returncode == 0, out.stdout
        got.append(out.json()["ips"][0])
    # .11 is the gateway, .50 and .51 are excluded: .10, then the second range from .52.
    assert [ip["address"] for ip in got] == ["10.0.0.10/24", "10.0.0.12/24", "10.0.0.52/24"]
    # One gateway per network: the second range of the same subnet routes through it too.
    assert got[0]["gateway"] == "10.0.0.11" and got[2]["gateway"] == "10.0.0.11"
    for i, ns in enumerate(spaces):
        assert cni("DEL", conf, container_id=f"rng-{i}", netns=ns).returncode == 0


def test_routes_are_installed_and_checked(lab: Lab, netns: str) -> None:
    cni = Cni(lab)
    conf = conf_with(cni, lab, {"type": "overlay", "subnet": "10.0.0.0/24",
                                "routes": [{"dst": "192.168.77.0/24", "gw": "10.0.0.254"},
                                           {"dst": "192.168.78.0/24"}]})
    out = cni("ADD", conf, container_id="routes", netns=netns)
    assert out.returncode == 0, out.stdout
    assert out.json()["routes"] == [{"dst": "192.168.77.0/24", "gw": "10.0.0.254"},
                                    {"dst": "192.168.78.0/24"}]
    ns = os.path.basename(netns)
    table = run(["ip", "route"], netns=ns).stdout
    assert "192.168.77.0/24 via 10.0.0.254 dev eth0" in table
    assert "192.168.78.0/24 dev eth0" in table
    assert cni("CHECK", conf, container_id="routes", netns=netns).returncode == 0
    run(["ip", "route", "del", "192.168.77.0/24"], netns=ns)
    checked = cni("CHECK", conf, container_id="routes", netns=netns)
    assert checked.json()["code"] == 106
    assert "route to 192.168.77.0/24 via 10.0.0.254 is missing" in checked.json()["msg"]
    assert cni("DEL", conf, container_id="routes", netns=netns).returncode == 0


def host_local_ipam(data_dir: Path) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.20.0.0/24", "rangeStart": "10.20.0.40",
                         "gateway": "10.20.0.1"}]],
            "routes": [{"dst": "10.21.0.0/16"}]}


def test_delegation_to_host_local(lab: Lab, netns: str, reference_plugins: str,
                                  tmp_path: Path) -> None:
    cni = Cni(lab)
    conf = conf_with(cni, lab, host_local_ipam(tmp_path), name="hl-net")
    conf["vxlanID"] = 4242
    env_path = f"{lab.cni_bin}:{reference_plugins}"
    out = cni("ADD", conf, container_id="hl-1", netns=netns, cni_path=env_path)
    assert out.returncode == 0, out.stdout
    result = out.json()
    assert result["ips"] == [{"address": "10.20.0.40/24", "gateway": "10.20.0.1", "interface": 1}]
    assert result["routes"] == [{"dst": "10.21.0.0/16"}]
    assert container_addresses(netns) == ["10.20.0.40/24"]
    reservation = tmp_path / "hl-net" / "10.20.0.40"
    assert reservation.read_text().split() == ["hl-1", "eth0"]
    assert cni("CHECK", conf, container_id="hl-1", netns=netns, cni_path=env_path).returncode == 0
    assert cni("DEL", conf, container_id="hl-1", netns=netns, cni_path=env_path).returncode == 0
    assert not reservation.exists()


def test_failed_add_after_delegated_ipam_releases_the_lease(
        lab: Lab, netns: str, reference_plugins: str, tmp_path: Path) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    conf = conf_with(cni, lab, host_local_ipam(tmp_path), name="hl-net")
    conf["vxlanID"] = 4242
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"],
        netns=os.path.basename(netns))  # the name ADD wants is taken: it fails after IPAM
    before = host_snapshot(lab, h, netns)
    out = cni("ADD", conf, container_id="hl-2", netns=netns,
              cni_path=f"{lab.cni_bin}:{reference_plugins}")
    assert out.returncode != 0 and "already exists" in out.json()["msg"]
    assert list((tmp_path / "hl-net").glob("10.*")) == []  # the spec's DEL on failed ADD ran
    assert host_snapshot(lab, h, netns) == before


def test_delegated_plugin_errors_pass_through(lab: Lab, netns: str, reference_plugins: str,
                                              tmp_path: Path) -> None:
    cni = Cni(lab)
    conf = conf_with(cni, lab, {"type": "host-local", "dataDir": str(tmp_path)}, name="hl-net")
    conf["vxlanID"] = 4242
    out = cni("ADD", conf, container_id="hl-3", netns=netns,
              cni_path=f"{lab.cni_bin}:{reference_plugins}")
    assert out.returncode != 0
    assert out.json()["msg"].startswith("IPAM plugin host-local:")
    missing = cni("ADD", conf_with(cni, lab, {"type": "no-such-ipam"}, name="hl-net") | {
        "vxlanID": 4242}, container_id="hl-4", netns=netns)
    assert missing.json()["code"] == 7 and "was not found in CNI_PATH" in missing.json()["msg"]


def test_delegation_to_static(lab: Lab, netns: str, reference_plugins: str) -> None:
    cni = Cni(lab)
    conf = conf_with(cni, lab, {"type": "static", "addresses": [{"address": "10.30.0.9/24"}]},
                     name="st-net")
    conf["vxlanID"] = 4343
    env_path = f"{lab.cni_bin}:{reference_plugins}"
    out = cni("ADD", conf, container_id="st-1", netns=netns, cni_path=env_path)
    assert out.returncode == 0, out.stdout
    assert container_addresses(netns) == ["10.30.0.9/24"]
    assert cni("DEL", conf, container_id="st-1", netns=netns, cni_path=env_path).returncode == 0
