"""overlayctl lists what etcd and an agent say, as tables and as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    assert ctr.add_container(lab, "c0", "host1", labels={"app": "web", "tier": "front"}
                             ).returncode == 0
    return lab


def ctl(lab: Lab, *args: str) -> str:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(), *args],
               netns=lab.underlay_ns).stdout


def test_hosts_networks_endpoints_as_json(lab: Lab) -> None:
    hosts = json.loads(ctl(lab, "--json", "hosts"))
    assert [(h["host"], h["vtep"], h["alive"]) for h in hosts] == [
        ("host0", "172.31.0.1", True), ("host1", "172.31.0.2", True)]
    assert json.loads(ctl(lab, "--json", "networks")) == [
        {"name": "my-net", "vni": 42, "subnet": "10.0.0.0/24", "encrypted": False}]
    (ep,) = json.loads(ctl(lab, "--json", "endpoints"))
    assert (ep["host"], ep["ips"], ep["container_id"]) == ("host1", ["10.0.0.2/24"],
                                                          lab.containers["c0"]["container_id"])
    assert ep["labels"] == {"app": "web", "tier": "front"}


def test_tables_for_people(lab: Lab) -> None:
    table = ctl(lab, "endpoints").splitlines()
    assert table[0].split() == ["NETWORK", "CONTAINER_ID", "IFNAME", "HOST", "IPS", "MAC", "PORT",
                              "POD", "LABELS"]
    assert "10.0.0.2/24" in table[1]
    assert table[1].split()[-1] == "app=web,tier=front"


def test_agent_status(lab: Lab) -> None:
    out = run([os.path.join(steps.scripts_dir(), "overlayctl"), "--json", "status", "--socket",
               lab.host("host1").socket]).stdout
    status = json.loads(out)
    assert status["host"] == "host1" and status["datapath"] == "netdev"
    assert status["ovs_connected"] and status["etcd_connected"]
    assert status["local_endpoints"] == 1


def test_host_without_lease_is_shown_dead(lab: Lab) -> None:
    h = lab.host("host1")
    lab.stop_agent(h)
    try:
        run(lab.etcdctl("del", "/overlay/v1/hosts/host1"),
            netns=lab.underlay_ns)  # what lease expiry does, without waiting for the TTL
        hosts = {row["host"]: row["alive"] for row in json.loads(ctl(lab, "--json", "hosts"))}
        assert hosts == {"host0": True, "host1": False}
    finally:
        lab.start_agent(h)
