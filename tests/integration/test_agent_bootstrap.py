"""The agent builds its bridges and tunnel port idempotently, at every start."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from overlay.lab.shell import run
from overlay.lab.topology import Lab


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def ovs_layout(lab: Lab) -> dict[str, str]:
    h = lab.hosts[0]
    vsctl = ["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock"]
    return {
        "bridges": run([*vsctl, "list-br"]).stdout,
        "br-int ports": run([*vsctl, "list-ports", "br-int"]).stdout,
        "br-phy ports": run([*vsctl, "list-ports", "br-phy"]).stdout,
        "tunnel": run([*vsctl, "--columns=type,options,ofport", "list", "Interface",
                       "vxlan0"]).stdout,
        "br-int": run([*vsctl, "--columns=datapath_type,fail_mode,protocols", "list", "Bridge",
                       "br-int"]).stdout,
        "underlay ip": run(["ip", "-br", "-4", "addr", "show", "br-phy"],
                           netns=h.netns).stdout.split()[-1],
        "eth0 ips": run(["ip", "-br", "-4", "addr", "show", "eth0"], netns=h.netns).stdout,
    }


def test_bridges_and_tunnel_are_as_designed(lab: Lab) -> None:
    layout = ovs_layout(lab)
    assert layout["bridges"].split() == ["br-int", "br-phy"]
    assert layout["br-int ports"].split() == ["vxlan0"]
    assert layout["br-phy ports"].split() == ["eth0"]
    assert 'type                : vxlan' in layout["tunnel"]
    assert 'key=flow' in layout["tunnel"] and 'remote_ip=flow' in layout["tunnel"]
    assert "netdev" in layout["br-int"] and "secure" in layout["br-int"]
    assert layout["underlay ip"] == f"{lab.hosts[0].vtep}/24"
    assert lab.hosts[0].vtep not in layout["eth0 ips"]  # moved to br-phy, not duplicated


def test_restarting_the_agent_changes_nothing(lab: Lab) -> None:
    h = lab.hosts[0]
    before = ovs_layout(lab)
    for _ in range(2):
        lab.stop_agent(h)
        lab.start_agent(h)
    assert ovs_layout(lab) == before
