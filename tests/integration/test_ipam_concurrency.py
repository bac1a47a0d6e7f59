"""Two agents allocating from one network at the same moment never hand out the same IP."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni

PER_HOST = 12


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    # A small range makes collisions between the two agents likely, not just possible.
    return lab_factory(hosts=2, network=("tight-net", 77, "10.7.0.0/27"))


def test_concurrent_adds_on_two_hosts_get_distinct_ips(lab: Lab) -> None:
    cni = Cni(lab)
    jobs = [(h, f"{lab.prefix}-ip{h.name[-1]}-{i}") for h in lab.hosts for i in range(PER_HOST)]
    for _, name in jobs:
        add_netns(name)
    try:
        def add(job: tuple[object, str]) -> str:
            h, name = job
            out = cni("ADD", cni.netconf(h, "tight-net"), container_id=name,  # type: ignore[arg-type]
                      netns=f"/var/run/netns/{name}")
            assert out.returncode == 0, out.stdout
            return str(out.json()["ips"][0]["address"])

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            addresses = list(pool.map(add, jobs))
        assert len(set(addresses)) == len(jobs), sorted(addresses)
        assert all(ipaddress.ip_interface(a) in ipaddress.ip_network("10.7.0.0/27")
                   for a in addresses)
        held = run(lab.etcdctl("get", "--prefix", "/overlay/v1/ipam/tight-net/", "--keys-only"),
                   netns=lab.underlay_ns).stdout.split()
        assert len(held) == len(jobs)
        hosts = {h.name for h, _ in jobs}
        assert hosts == {"host0", "host1"}
    finally:
        for h, name in jobs:
            cni("DEL", cni.netconf(h, "tight-net"), container_id=name,
                netns=f"/var/run/netns/{name}")
            del_netns(name)
    left = run(lab.etcdctl("get", "--prefix", "/overlay/v1/ipam/tight-net/", "--keys-only"),
               netns=lab.underlay_ns).stdout
    assert left.split() == []


def test_exhausted_range_is_a_clear_error_with_nothing_left(lab: Lab) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    conf = cni.netconf(h, "tight-net")
    conf["ipam"] = {"type": "overlay", "subnet": "10.7.0.0/27", "rangeStart": "10.7.0.20",
                    "rangeEnd": "10.7.0.20"}
    names = [f"{lab.prefix}-ex{i}" for i in range(2)]
    for n in names:
        add_netns(n)
    try:
        assert cni("ADD", conf, container_id=names[0],
                   netns=f"/var/run/netns/{names[0]}").returncode == 0
        second = cni("ADD", conf, container_id=names[1], netns=f"/var/run/netns/{names[1]}")
        assert second.returncode != 0 and second.json()["code"] == 104
        assert "no free address" in second.json()["msg"]
        links = run(["ip", "-o", "link"], netns=names[1]).stdout
        assert "eth0" not in links
    finally:
        for n in names:
            cni("DEL", conf, container_id=n, netns=f"/var/run/netns/{n}")
            del_netns(n)
