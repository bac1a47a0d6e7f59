"""The agent builds its bridges and tunnel port idempotently, at every start."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
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


def _connect_as_nobody(path: str) -> str:
    """Connect to a unix socket from a child process running as uid/gid 65534."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, try the door, report, exit without cleanup handlers
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
            outcome = "connected"
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno or 0, str(exc))
        os.write(write, outcome.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        return fh.read()


def test_agent_socket_is_for_root_only(lab: Lab) -> None:
    h = lab.hosts[0]
    st = os.stat(h.socket)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    # Open the directories on the way, so that only the socket's own mode stands in the way.
    dirs = [lab.workdir, h.dir]
    modes = [stat.S_IMODE(os.stat(d).st_mode) for d in dirs]
    try:
        for d, m in zip(dirs, modes, strict=True):
            os.chmod(d, m | 0o005)
        assert _connect_as_nobody(h.socket) == "EACCES"
    finally:
        for d, m in zip(dirs, modes, strict=True):
            os.chmod(d, m)
    # And root, for contrast, gets in (the plugin's CHECK reaches the agent and gets an answer).
    conf = ctr.plugin_netconf(ctr.read_conflist(h, "my-net"))
    out = ctr.cni_exec(lab.cni_bin, "CHECK", container_id="nobody-here", netns="/proc/self/ns/net",
                       ifname="eth0", netconf=conf)
    assert out.json()["code"] == 3
