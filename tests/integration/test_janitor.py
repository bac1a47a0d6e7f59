"""Stale state: a container that vanished without DEL is cleaned up when the agent starts;
one still in use is not touched."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import del_netns, run
from overlay.lab.topology import Lab
from overlay_fixtures import host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def test_agent_start_removes_what_vanished_and_keeps_what_lives(lab: Lab) -> None:
    h = lab.hosts[0]
    assert ctr.add_container(lab, "alive", "host0").returncode == 0
    before_gone = host_snapshot(lab, h)
    assert ctr.add_container(lab, "gone", "host0").returncode == 0
    gone = lab.containers.pop("gone")
    lab.save()
    del_netns(gone["netns"])  # the runtime lost it: no DEL will ever come

    lab.stop_agent(h)
    lab.start_agent(h)

    after = host_snapshot(lab, h)
    assert after == before_gone  # port, veth, endpoint record and address of "gone" are gone
    assert f"/overlay/v1/endpoints/my-net/{lab.containers['alive']['container_id']}/eth0" in \
        after["etcd"]
    with open(h.agent_log) as fh:
        assert f"janitor removed my-net/{gone['container_id']}/eth0" in fh.read()
    # "alive" still works end to end: its flows are there and CHECK agrees.
    conf = ctr.plugin_netconf(ctr.read_conflist(h, "my-net"))
    checked = ctr.cni_exec(lab.cni_bin, "CHECK", container_id=lab.containers["alive"]["container_id"],
                           netns=f"/var/run/netns/{lab.containers['alive']['netns']}",
                           ifname="eth0", netconf=conf)
    assert checked.returncode == 0, checked.stdout
    doctor = run([os.path.join(steps.scripts_dir(), "overlayctl"),
                  *lab.overlayctl_etcd_args(), "doctor", "--socket", h.socket],
                 netns=lab.underlay_ns, check=False)
    assert doctor.returncode == 0, doctor.stdout
