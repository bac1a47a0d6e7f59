"""50 ADDs, then 50 DELs, all at once on one host: all succeed, no duplicate IP, nothing leaked."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from overlay.lab.shell import add_netns, del_netns
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot

PARALLEL = 50


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def test_fifty_parallel_adds_and_dels(lab: Lab) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    names = [f"{lab.prefix}-p{i}" for i in range(PARALLEL)]
    for n in names:
        add_netns(n)
    try:
        before = host_snapshot(lab, h)

        def call(command: str, name: str) -> str:
            out = cni(command, cni.netconf(h), container_id=name, netns=f"/var/run/netns/{name}")
            assert out.returncode == 0, f"{command} {name}: {out.stdout} {out.stderr}"
            return out.json()["ips"][0]["address"] if command == "ADD" else ""

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            addresses = list(pool.map(lambda n: call("ADD", n), names))
        assert len(set(addresses)) == PARALLEL
        during = host_snapshot(lab, h)
        assert sum(1 for k in during["etcd"] if k.startswith("/overlay/v1/ipam/my-net/")) == PARALLEL
        assert sum(1 for k in during["etcd"] if k.startswith("/overlay/v1/endpoints/")) == PARALLEL

        # A new container added twice at once: serialised, one wins, the other is refused.
        dup = f"{lab.prefix}-dup"
        add_netns(dup)
        names.append(dup)
        with ThreadPoolExecutor(max_workers=2) as pool:
            twice = list(pool.map(lambda _: cni("ADD", cni.netconf(h), container_id=dup,
                                                netns=f"/var/run/netns/{dup}"), range(2)))
        assert sorted(o.returncode for o in twice)[0] == 0
        assert [o.json().get("code") for o in twice if o.returncode != 0] == [107]

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(pool.map(lambda n: call("DEL", n), names))
        assert host_snapshot(lab, h) == before
    finally:
        for n in names:
            del_netns(n)
