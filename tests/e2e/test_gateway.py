"""The distributed gateway, through the real plugin: containers reach the underlay with their
host's address, same-network traffic is neither NATed nor routed through the gateway, two
networks with one subnet stay apart and both get egress, and the last DEL on a host takes
every gateway artifact with it.

The "outside world" is a TCP echo server in the lab's underlay namespace (172.31.0.254): it
answers each line with the peer address it saw and the line, so a test learns both whether
the connection worked and which source address arrived.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from traffic import Traffic

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.faults import TableWatch
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import with_c0_and_c1

T = TypeVar("T")
SERVER_IP, PORT = "172.31.0.254", 7777
GATEWAY_MAC = "0e:6f:76:00:00:2a"  # VNI 42

ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(64)
def serve(conn, peer):
    with conn, conn.makefile("rw") as f:
        for line in f:
            f.write(f"{peer[0]} {line.strip()}\n"); f.flush()
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"""

CLIENT = r"""
import socket, sys
s = socket.socket(); s.settimeout(5)
if len(sys.argv) > 4:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", int(sys.argv[4])))
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(sys.argv[3].encode() + b"\n")
print(s.makefile().readline().strip())
"""


def echo_server(netns: str, ip: str, port: int = PORT) -> subprocess.Popen[bytes]:
    """Returns once the server listens: a fixed 0.5 s was not enough at load 14 (the first
    connection was refused)."""
    proc = subprocess.Popen(in_netns(netns, [sys.executable, "-c", ECHO_SERVER, ip, str(port)]))
    deadline = time.monotonic() + 30
    while f"{ip}:{port}" not in run(["ss", "-Hltn"], netns=netns).stdout:
        assert proc.poll() is None and time.monotonic() < deadline, "the echo server did not start"
        time.sleep(0.05)
    return proc


def ask(netns: str, ip: str, token: str, port: int = PORT, src_port: int | None = None) -> str:
    """Connect from `netns`, send a token; returns '<source address seen> <token>'."""
    args = [sys.executable, "-c", CLIENT, ip, str(port), token]
    if src_port is not None:
        args.append(str(src_port))
    proc = run(args, netns=netns, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def iptables_tagged(h: LabHost) -> list[str]:
    out = []
    for table in ("raw", "mangle", "filter", "nat"):
        out += [f"{table} {line}" for line in run(["iptables", "-w", "-t", table, "-S"],
                                                  netns=h.netns).stdout.splitlines()
                if "overlay-gw:" in line]
    return out


def gateway_artifacts(h: LabHost) -> dict[str, object]:
    """Everything a gateway adds to a host, outside OVS flows."""
    links = run(["ip", "-o", "link", "show"], netns=h.netns).stdout
    rules = run(["ip", "rule", "show"], netns=h.netns).stdout
    routes = run(["ip", "route", "show", "table", "all"], netns=h.netns).stdout
    return {"links": [ln.split(":")[1].strip() for ln in links.splitlines() if ": ovg" in ln],
            "rules": [ln for ln in rules.splitlines() if "fwmark" in ln],
            "routes": [ln for ln in routes.splitlines() if "ovg" in ln],
            "iptables": iptables_tagged(h)}


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


@pytest.fixture(scope="module")
def server(lab: Lab) -> Iterator[None]:
    proc = echo_server(lab.underlay_ns, SERVER_IP)
    yield
    proc.terminate()
    proc.wait()


def vtep(lab: Lab, host: str) -> str:
    return lab.host(host).vtep


def test_result_reports_gateway_and_default_route(lab: Lab) -> None:
    c0 = lab.containers["c0"]
    # The gateway is the subnet's first address and never handed out.
    assert c0["ip"] != "10.0.0.1"
    routes = run(["ip", "route"], netns=c0["netns"]).stdout
    assert "default via 10.0.0.1 dev eth0" in routes, routes


def test_the_gateway_port_holds_its_address_and_only_our_routes(lab: Lab) -> None:
    """The kernel side as overlay/gateway/kernel.py writes it: the address without the
    kernel's own prefix route (noprefixroute), the subnet in the network's table and in main,
    both marked ours (proto 79), scope link; the fwmark rule to the table."""
    h = lab.host("host0")
    port = "ovg42"
    addr = run(["ip", "-4", "-o", "addr", "show", "dev", port], netns=h.netns).stdout
    assert "inet 10.0.0.1/24" in addr and "noprefixroute" in addr, addr
    routes = [ln for ln in run(["ip", "route", "show", "table", "all"],
                               netns=h.netns).stdout.splitlines() if f"dev {port}" in ln]
    assert not [ln for ln in routes if "proto kernel" in ln and "10.0.0.0/24" in ln], routes
    ours = [ln for ln in routes if ln.startswith("10.0.0.0/24 ")]
    assert len(ours) == 2 and all("proto 79 scope link" in ln for ln in ours), routes
    assert any("table" not in ln for ln in ours) and any(" table " in ln for ln in ours), ours
    rules = run(["ip", "rule", "show"], netns=h.netns).stdout
    assert any("fwmark" in ln for ln in rules.splitlines()), rules


def test_container_reaches_underlay_with_its_hosts_address(lab: Lab, server: None) -> None:
    assert ask(lab.containers["c0"]["netns"], SERVER_IP, "from-c0") == \
        f"{vtep(lab, 'host0')} from-c0"
    # The gateway answered ARP with the one gateway MAC every host uses.
    neigh = run(["ip", "neigh", "show", "10.0.0.1"], netns=lab.containers["c0"]["netns"]).stdout
    assert GATEWAY_MAC in neigh, neigh


def test_container_on_host1_leaves_through_host1(lab: Lab, server: None) -> None:
    assert ask(lab.containers["c1"]["netns"], SERVER_IP, "from-c1") == \
        f"{vtep(lab, 'host1')} from-c1"
    neigh = run(["ip", "neigh", "show", "10.0.0.1"], netns=lab.containers["c1"]["netns"]).stdout
    assert GATEWAY_MAC in neigh, neigh


def test_same_network_traffic_is_not_nated(lab: Lab) -> None:
    c0, c1 = lab.containers["c0"], lab.containers["c1"]
    proc = echo_server(c1["netns"], c1["ip"], 7000)
    try:
        assert ask(c0["netns"], c1["ip"], "east-west", 7000) == f"{c0['ip']} east-west"
    finally:
        proc.terminate()
        proc.wait()


def test_the_host_reaches_its_local_container(lab: Lab) -> None:
    c0 = lab.containers["c0"]
    out = run(["ping", "-c", "2", "-i", "0.2", "-W", "1", c0["ip"]], netns=lab.host("host0").netns,
              check=False)
    assert out.returncode == 0, out.stdout


def test_path_mtu_through_the_gateway(lab: Lab, server: None) -> None:
    c0 = lab.containers["c0"]
    mtu = int(run(["cat", "/sys/class/net/eth0/mtu"], netns=c0["netns"]).stdout)
    # A full-size unfragmentable packet crosses the gateway; one byte more is refused locally.
    ok = run(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), SERVER_IP],
             netns=c0["netns"], check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = run(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 27), SERVER_IP],
                  netns=c0["netns"], check=False)
    assert too_big.returncode != 0


def test_check_and_doctor_see_the_gateway(lab: Lab) -> None:
    h0 = lab.host("host0")
    c0 = lab.containers["c0"]
    conf = ctr.plugin_netconf(ctr.read_conflist(h0, "my-net"))
    check = ctr.cni_exec(lab.cni_bin, "CHECK", container_id=c0["container_id"],
                         netns=f"/var/run/netns/{c0['netns']}", ifname="eth0", netconf=conf)
    assert check.returncode == 0, check.stdout
    # Someone deletes the masquerade rule: CHECK says so.
    check = broken_while(h0, lambda: ctr.cni_exec(
        lab.cni_bin, "CHECK", container_id=c0["container_id"],
        netns=f"/var/run/netns/{c0['netns']}", ifname="eth0", netconf=conf),
        lambda out: "MASQUERADE" in out.stdout)
    assert check.returncode != 0 and check.json()["code"] == 106, check.stdout
    assert "MASQUERADE" in check.json()["msg"], check.stdout


def broken_while(h: LabHost, look: Callable[[], T], names_it: Callable[[T], bool],
                 also: Callable[[], object] = lambda: None) -> T:
    """Delete host `h`'s masquerade rule (and what `also` breaks), then `look`. The agent's
    periodic check (every 15 s) puts it back, and on a loaded machine it has done so between
    the deletion and the look (doctor then found nothing; a doctor call took seconds at load
    18, and three tries in a row all lost the race once): so break again, up to ten times,
    until what `look` says names it. Returns the last look."""
    for _ in range(10):
        for line in (ln for ln in iptables_tagged(h) if ln.startswith("nat ")):
            run(["iptables", "-w", "-t", "nat", "-D", *shlex.split(line)[2:]], netns=h.netns)
        also()
        seen = look()
        if names_it(seen):
            break
    return seen


def doctor(lab: Lab, h: LabHost) -> subprocess.CompletedProcess[str]:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"),
                *lab.overlayctl_etcd_args(), "doctor", "--socket", h.socket],
               netns=lab.underlay_ns, check=False)


def test_doctor_names_a_broken_gateway_and_the_agent_repairs_it(lab: Lab, server: None) -> None:
    h0 = lab.host("host0")
    # The masquerade rule and the return mark's ip rule deleted: doctor names both ...
    broken = broken_while(h0, lambda: doctor(lab, h0),
                          lambda out: "MASQUERADE" in out.stdout and "fwmark" in out.stdout,
                          also=lambda: run(["ip", "rule", "del", "priority", "100"],
                                           netns=h0.netns, check=False))
    assert broken.returncode != 0 and "MASQUERADE" in broken.stdout, broken.stdout
    assert "fwmark" in broken.stdout, broken.stdout
    # ... and the agent's periodic check (every 15 s) puts both back.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and doctor(lab, h0).returncode != 0:
        time.sleep(1)
    assert doctor(lab, h0).returncode == 0, doctor(lab, h0).stdout
    assert ask(lab.containers["c0"]["netns"], SERVER_IP, "repaired") == \
        f"{vtep(lab, 'host0')} repaired"


def test_dns_comes_back_and_a_contradicting_gateway_leaves_nothing(lab: Lab,
                                                                 netns: str) -> None:
    h0 = lab.host("host0")
    conf = ctr.plugin_netconf(ctr.read_conflist(h0, "my-net"))
    dns = {"nameservers": ["172.31.0.254"], "domain": "lab.test", "search": ["lab.test"],
           "options": ["ndots:1"]}
    added = ctr.cni_exec(lab.cni_bin, "ADD", container_id="dns-1", netns=netns, ifname="eth0",
                         netconf={**conf, "dns": dns})
    assert added.returncode == 0, added.stdout
    assert added.json()["dns"] == dns
    assert ctr.cni_exec(lab.cni_bin, "DEL", container_id="dns-1", netns=netns, ifname="eth0",
                        netconf=conf).returncode == 0
    # c0 uses my-net's gateway with masquerade on this host; ipMasq false contradicts it.
    before = gateway_artifacts(h0)
    refused = ctr.cni_exec(lab.cni_bin, "ADD", container_id="nomasq-1", netns=netns,
                           ifname="eth0", netconf={**conf, "ipMasq": False})
    assert refused.returncode != 0 and refused.json()["code"] == 105, refused.stdout
    assert "ipMasq" in refused.json()["msg"]
    assert gateway_artifacts(h0) == before
    assert run(["ip", "-o", "link"], netns=os.path.basename(netns)).stdout.count("\n") == 1


@pytest.fixture(scope="module")
def overlapping(lab: Lab) -> Lab:
    """other-net has my-net's subnet (VNI 43); far-net another one (VNI 44); all on host0."""
    ctr.define_network(lab, "other-net", 43, "10.0.0.0/24")
    ctr.define_network(lab, "far-net", 44, "10.9.0.0/24")
    for name, network in (("o0", "other-net"), ("f0", "far-net")):
        out = ctr.add_container(lab, name, "host0", network)
        assert out.returncode == 0, out.stdout
    return lab


def test_overlapping_networks_both_get_egress_and_stay_apart(overlapping: Lab,
                                                             server: None) -> None:
    lab = overlapping
    c0, o0 = lab.containers["c0"], lab.containers["o0"]
    assert c0["ip"] == o0["ip"]  # same subnet, same first free address
    host0 = vtep(lab, "host0")
    # The same address and the same source port, to the same server, at the same time: only
    # per-network conntrack zones keep these two connections apart, and only the per-network
    # return marks bring each reply back to its own network.
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda n=name: results.__setitem__(
        n, ask(lab.containers[n]["netns"], SERVER_IP, f"token-{n}", src_port=40001)))
        for name in ("c0", "o0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"c0": f"{host0} token-c0", "o0": f"{host0} token-o0"}
    # No network reaches another through the host: far-net's f0 cannot reach c0 via its
    # gateway, although the host itself routes to 10.0.0.0/24.
    blocked = run(["ping", "-c", "2", "-i", "0.2", "-W", "1", c0["ip"]],
                  netns=lab.containers["f0"]["netns"], check=False)
    assert blocked.returncode != 0, blocked.stdout
    # The host reaches my-net (the first on the host), and says why not other-net.
    with open(lab.host("host0").agent_log) as fh:
        assert "overlaps the subnet of ovg42" in fh.read()


def test_agent_restart_under_egress_traffic(overlapping: Lab) -> None:
    """Hitless for egress too: the switch's rules and the gateway's kernel state (addresses,
    routes, rules, iptables, conntrack: the TCP stream's NAT entry) stay as they were while
    the agent is killed and started again. Losses and gaps are printed (tests/traffic.py)."""
    lab = overlapping
    h0 = lab.host("host0")
    before = gateway_artifacts(h0)
    with TableWatch(h0) as watch:
        traffic = Traffic(lab, 8, dst_ip=SERVER_IP, server_netns=lab.underlay_ns, port=5399)
        time.sleep(2)
        stopped = time.time()
        with open(h0.agent_pidfile) as fh:
            os.kill(int(fh.read()), signal.SIGKILL)
        time.sleep(0.5)
        lab.start_agent(h0)
        outcome = traffic.finish()
    print(f"  {watch.summary()}")
    assert not watch.problems, watch.problems
    assert outcome.tcp_ok and outcome.mostly_answered_after(stopped)
    # The restarted agent found the gateway whole: nothing added twice, nothing lost.
    assert gateway_artifacts(h0) == before
    assert doctor(lab, h0).returncode == 0, doctor(lab, h0).stdout


def test_vswitchd_restart_brings_the_gateway_back(overlapping: Lab, server: None) -> None:
    """ovs-vswitchd owns the gateway ports' interfaces (netdev: taps): they vanish with it,
    and with them the address and routes; the agent restores them after the restart."""
    lab = overlapping
    h0, c0 = lab.host("host0"), lab.containers["c0"]
    before = gateway_artifacts(h0)
    steps.stop_pidfile(os.path.join(h0.ovs_dir, "ovs-vswitchd.pid"))
    steps.start_vswitchd(h0.ovs_dir, h0.netns)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and gateway_artifacts(h0) != before:
        time.sleep(0.2)
    assert gateway_artifacts(h0) == before
    deadline = time.monotonic() + 20
    answer = ""
    while time.monotonic() < deadline and not answer:
        proc = run([sys.executable, "-c", CLIENT, SERVER_IP, str(PORT), "after"],
                   netns=c0["netns"], check=False)
        answer = proc.stdout.strip()
    assert answer == f"{vtep(lab, 'host0')} after"
    assert doctor(lab, h0).returncode == 0, doctor(lab, h0).stdout


def test_del_of_the_last_container_removes_every_gateway_artifact(overlapping: Lab) -> None:
    lab = overlapping
    h0, h1 = lab.host("host0"), lab.host("host1")
    assert gateway_artifacts(h1)["links"] == ["ovg42"]
    assert ctr.del_container(lab, "c1").returncode == 0
    assert gateway_artifacts(h1) == {"links": [], "rules": [], "routes": [], "iptables": []}
    flows = run(["ovs-ofctl", "dump-flows", "br-int"],
                env={"OVS_RUNDIR": h1.ovs_dir}).stdout
    assert "0e:6f:76" not in flows
    ports = run(["ovs-vsctl", f"--db=unix:{h1.ovs_dir}/db.sock", "list-ports", "br-int"]).stdout
    assert "ovg" not in ports
    # On host0, other-net's gateway goes with o0; my-net's and far-net's stay.
    assert ctr.del_container(lab, "o0").returncode == 0
    assert gateway_artifacts(h0)["links"] == ["ovg42", "ovg44"]
    assert not [r for r in gateway_artifacts(h0)["iptables"] if "overlay-gw:43" in str(r)]
    assert doctor(lab, h0).returncode == 0, doctor(lab, h0).stdout
