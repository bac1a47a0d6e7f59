"""STATUS with real faults: etcd stopped (50, and ADD asks to try again), ovs-vswitchd stopped (51)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from overlay.lab import host as steps
from overlay.lab.topology import Lab
from overlay_fixtures import Cni


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def status(lab: Lab) -> tuple[int, dict[str, object] | None]:
    cni = Cni(lab)
    out = cni("STATUS", cni.netconf(lab.hosts[0], cniVersion="1.1.0"), container_id="",
              netns="", ifname="")
    return out.returncode, out.json()


def test_etcd_down_is_50_and_add_says_try_again(lab: Lab, netns: str) -> None:
    assert status(lab) == (0, None)
    steps.stop_pidfile(os.path.join(lab.workdir, "etcd", "etcd.pid"))
    try:
        rc, err = status(lab)
        assert rc != 0 and err is not None and err["code"] == 50
        assert "etcd is not reachable" in str(err["msg"])
        cni = Cni(lab)
        started = time.monotonic()
        out = cni("ADD", cni.netconf(lab.hosts[0]), container_id="etcd-down", netns=netns)
        print(f"ADD with etcd down answered in {time.monotonic() - started:.1f} s")
        assert out.returncode != 0 and out.json()["code"] == 11
        assert "etcd is not reachable" in out.json()["msg"]
    finally:
        lab._up_underlay()  # starts etcd again on the same data
    cni = Cni(lab)
    deadline = time.monotonic() + 30
    while status(lab)[0] != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status(lab) == (0, None)
    added = cni("ADD", cni.netconf(lab.hosts[0]), container_id="etcd-back", netns=netns)
    assert added.returncode == 0, added.stdout
    assert cni("DEL", cni.netconf(lab.hosts[0]), container_id="etcd-back",
               netns=netns).returncode == 0


def test_vswitchd_down_is_51(lab: Lab) -> None:
    steps.stop_pidfile(os.path.join(lab.hosts[0].ovs_dir, "ovs-vswitchd.pid"))
    rc, err = status(lab)
    assert rc != 0 and err is not None and err["code"] == 51
    assert "ovs-vswitchd" in str(err["msg"])
