"""Bad input gets a CNI error on stdout, a non-zero exit, and leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def _fails_cleanly(lab: Lab, netns: str, netconf: dict[str, Any] | bytes, code: int,
                   words: str, container_netns: str | None = None) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    before = host_snapshot(lab, h, netns)
    out = cni("ADD", netconf, container_id="bad-1", netns=container_netns or netns)
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    err = out.json()
    assert err["code"] == code, err
    assert words in err["msg"] + err.get("details", ""), err
    assert host_snapshot(lab, h, netns) == before


def test_malformed_json(lab: Lab, netns: str) -> None:
    _fails_cleanly(lab, netns, b'{"cniVersion": "1.0.0", "type": "ovs", ', 6, "not valid JSON")


def test_missing_vxlan_id(lab: Lab, netns: str) -> None:
    conf = Cni(lab).netconf(lab.hosts[0])
    del conf["vxlanID"]
    _fails_cleanly(lab, netns, conf, 7, "vxlanID must be an integer from 1 to 16777215")


@pytest.mark.parametrize("vni", [0, 16_777_216, "42"])
def test_invalid_vxlan_id(lab: Lab, netns: str, vni: object) -> None:
    conf = Cni(lab).netconf(lab.hosts[0], vxlanID=vni)
    _fails_cleanly(lab, netns, conf, 7, "vxlanID must be an integer")


def test_unknown_bridge(lab: Lab, netns: str) -> None:
    conf = Cni(lab).netconf(lab.hosts[0], bridge="br-nope")
    _fails_cleanly(lab, netns, conf, 7, "bridge 'br-nope' is not managed")


def test_nonexistent_netns(lab: Lab, netns: str) -> None:
    conf = Cni(lab).netconf(lab.hosts[0])
    _fails_cleanly(lab, netns, conf, 4, "does not exist",
                   container_netns="/var/run/netns/no-such-namespace")


def test_agent_not_running(lab: Lab, netns: str) -> None:
    conf = Cni(lab).netconf(lab.hosts[0], agentSocket="/run/overlay/nobody-home.sock")
    _fails_cleanly(lab, netns, conf, 11, "cannot reach overlay-agent")


def test_vni_already_used_by_another_network(lab: Lab, netns: str) -> None:
    conf = Cni(lab).netconf(lab.hosts[0], name="other-net")  # same VNI 42 as my-net
    _fails_cleanly(lab, netns, conf, 105, "vxlanID 42 already belongs to network 'my-net'")
