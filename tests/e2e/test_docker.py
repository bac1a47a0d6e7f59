"""Docker's own `docker network create -d ovs` and `docker run --net` on the netns lab: a
dockerd per lab host (overlay.lab.dockerd), the agent's driver (overlay/docker/), real
containers. The chapter's scenario (create on two hosts, run on two hosts, ping), static
addresses, connect/disconnect, a published port reached from outside the host, egress through
the gateway, a Docker and a CNI container on one network, and that `docker rm -f`, `docker
network rm` and a dockerd restart leave nothing behind (`overlayctl doctor` clean, no port,
veth, record, address or rule).

Skipped only where dockerd (docker.io) or busybox-static is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from overlay.lab import containers as ctr
from overlay.lab import dockerd
from overlay.lab import host as steps
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import eventually

CREATE = ("network", "create", "-d", "ovs", "--ipam-driver", "ovs")
MY_NET = (*CREATE, "--subnet", "10.0.0.0/24", "-o", "vxlanID=42", "my-net")
IMAGE = dockerd.IMAGE
ECHO_PORT = 7777
# Answers each line with the peer address it saw: which source address arrived from outside.
ECHO_SERVER = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(8)
while True:
    conn, peer = srv.accept()
    with conn:
        line = conn.makefile().readline()
        conn.sendall(f"{peer[0]} {line.strip()}\n".encode())
"""

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read()" \
        ".decode())"


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    reason = dockerd.available()
    if reason:
        pytest.skip(f"no Docker here: {reason}")
    lab = lab_factory(hosts=2)
    try:
        dockerd.up(lab)
        for h in lab.hosts:
            dk(h, *MY_NET)
        yield lab
    finally:
        dockerd.down(lab)


def dk(h: LabHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return dockerd.docker(h, *args, check=check)


def run_detached(h: LabHost, name: str, network: str = "my-net") -> str:
    """Start a container that sleeps on `network`; its address there."""
    dk(h, "run", "-d", "--name", name, "--net", network, IMAGE, "sleep", "600")
    return address_of(h, name, network)


def address_of(h: LabHost, name: str, network: str = "my-net") -> str:
    fmt = "{{(index .NetworkSettings.Networks \"" + network + "\").IPAddress}}"
    return dk(h, "inspect", "-f", fmt, name).stdout.strip()


def pings(h: LabHost, name: str, address: str) -> bool:
    """The endpoint reaches the other hosts through their etcd watch, milliseconds after its
    Join: a first ping may go before it has, so it is tried again until it answers."""
    return eventually(lambda: dk(h, "exec", name, "ping", "-c", "1", "-W", "1", address,
                                 check=False).returncode == 0, timeout=15, interval=0.3)


def doctor(lab: Lab, h: LabHost) -> subprocess.CompletedProcess[str]:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                "doctor", "--socket", h.socket], netns=lab.underlay_ns, check=False)


def docker_state(lab: Lab, h: LabHost) -> dict[str, list[str]]:
    """What Docker endpoints of `h` leave behind: etcd keys, OVS ports, veths, NAT rules."""
    lines = run(lab.etcdctl("get", "--prefix", "/overlay/v1/"),
                netns=lab.underlay_ns).stdout.splitlines()
    pairs = dict(zip(lines[::2], lines[1::2], strict=True))
    mine = f'"host": "{h.name}"'
    keys = [k for k, v in pairs.items() if k.startswith(("/overlay/v1/endpoints/",
                                                         "/overlay/v1/ipam/")) and mine in v]
    ports = run(["ovs-vsctl", "--db", f"unix:{h.ovs_dir}/db.sock", "list-ports",
                 lab.bridge]).stdout.split()
    links = run(["ip", "-o", "link"], netns=h.netns).stdout
    nat = run(["iptables-save", "-t", "nat"], netns=h.netns).stdout
    return {"etcd": [k for k in keys if "/docker-" in k or "docker-" in pairs[k]],
            "ports": [p for p in ports if p.startswith("ovl")],
            "veths": [w for w in links.split() if w.startswith(("ovl", "ovd"))],
            "rules": [line for line in nat.splitlines() if "overlay-docker:" in line]}


def assert_clean(lab: Lab, h: LabHost) -> None:
    found = doctor(lab, h)
    assert found.returncode == 0, found.stdout + found.stderr
    assert not any(docker_state(lab, h).values()), docker_state(lab, h)


def endpoint_keys(lab: Lab) -> list[str]:
    return [k for k in run(lab.etcdctl("get", "--prefix", "/overlay/v1/endpoints/my-net/",
                                       "--keys-only"), netns=lab.underlay_ns).stdout.split()
            if "/docker-" in k]


def test_create_on_a_second_host_joins_and_other_options_are_refused(lab: Lab) -> None:
    for h in lab.hosts:
        assert "my-net" in dk(h, "network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
    record = run(lab.etcdctl("get", "/overlay/v1/networks/my-net", "--print-value-only"),
                 netns=lab.underlay_ns).stdout
    assert '"vni": 42' in record and "10.0.0.0/24" in record
    h1 = lab.host("host1")
    other = dk(h1, *CREATE, "--subnet", "10.0.9.0/24", "-o", "vxlanID=42", "my-net2",
               check=False)
    assert other.returncode != 0
    assert "vxlanID 42 is network 'my-net' in etcd, with subnet 10.0.0.0/24, not " \
           "10.0.9.0/24" in other.stderr
    assert "my-net2" not in dk(h1, "network", "ls").stdout


def test_the_same_name_with_another_vni_is_refused_naming_the_difference(lab: Lab) -> None:
    h0, h1 = lab.hosts
    dk(h0, *CREATE, "--subnet", "10.0.50.0/24", "-o", "vxlanID=50", "net50")
    assert eventually(lambda: "net50" in run(lab.etcdctl("get", "/overlay/v1/vnis/50"),
                                             netns=lab.underlay_ns).stdout)
    # libnetwork names no network to its driver: the name is the daemon's once the network
    # exists there, so this host's containers are refused, with what etcd has.
    dk(h1, *CREATE, "--subnet", "10.0.50.0/24", "-o", "vxlanID=51", "net50")
    refused = dk(h1, "run", "--rm", "--net", "net50", IMAGE, "true", check=False)
    assert refused.returncode != 0
    assert "network 'net50' already exists with vxlanID 50" in refused.stderr
    for h in lab.hosts:
        dk(h, "network", "rm", "net50")
    assert_clean(lab, h1)


@pytest.mark.parametrize(("args", "says"), [
    (("--subnet", "10.0.7.0/24", "-o", "vxlanID=77"), "create it with --ipam-driver ovs"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "-o", "vxlanID=77", "--ipv6",
      "--subnet", "fd00:7::/64"), "IPv6"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "-o", "vxlanID=77", "--internal"),
     "--internal"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "--ip-range", "10.0.7.0/25",
      "-o", "vxlanID=77"), "--ip-range"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "--ipam-opt", "a=b",
      "-o", "vxlanID=77"), "--ipam-opt"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "--aux-address", "a=10.0.7.5",
      "-o", "vxlanID=77"), "--aux-address"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "--gateway", "10.0.7.254",
      "-o", "vxlanID=77"), "gateway is its subnet's first address, 10.0.7.1"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24", "-o", "vxlanID=77", "-o", "mtu=1400"),
     "unsupported driver option(s) mtu"),
    (("--ipam-driver", "ovs", "--subnet", "10.0.7.0/24"), "-o vxlanID=<1-16777215> is required"),
])
def test_what_the_driver_cannot_do_is_refused_saying_why(lab: Lab, args: tuple[str, ...],
                                                        says: str) -> None:
    h0 = lab.host("host0")
    refused = dk(h0, "network", "create", "-d", "ovs", *args, "bad", check=False)
    assert refused.returncode != 0 and says in refused.stderr, refused.stderr
    assert "bad" not in dk(h0, "network", "ls", "--format", "{{.Name}}").stdout.split()


@pytest.mark.parametrize(("args", "says"), [
    (("-p", "80"), "give the host port too, as -p HOSTPORT:80"),
    (("--ip", "10.0.0.1"), "--ip 10.0.0.1 is the network, gateway or broadcast address"),
])
def test_a_container_the_driver_cannot_attach_is_refused_and_leaves_nothing(
        lab: Lab, args: tuple[str, ...], says: str) -> None:
    h0 = lab.host("host0")
    refused = dk(h0, "run", "--rm", "--net", "my-net", *args, IMAGE, "true", check=False)
    assert refused.returncode != 0 and says in refused.stderr, refused.stderr
    assert_clean(lab, h0)


def test_containers_on_two_hosts_ping_each_other(lab: Lab) -> None:
    h0, h1 = lab.hosts
    a0 = run_detached(h0, "c0")
    a1 = run_detached(h1, "c1")
    assert a0.startswith("10.0.0.") and a1.startswith("10.0.0.") and a0 != a1
    assert pings(h0, "c0", a1)
    assert pings(h1, "c1", a0)
    route = dk(h0, "exec", "c0", "ip", "route").stdout
    assert "default via 10.0.0.1" in route
    assert doctor(lab, h0).returncode == 0 and doctor(lab, h1).returncode == 0


def test_a_static_address(lab: Lab) -> None:
    h0, h1 = lab.hosts
    shown = dk(h1, "run", "--rm", "--net", "my-net", "--ip", "10.0.0.77", IMAGE,
               "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert "10.0.0.77/24" in shown
    taken = dk(h0, "run", "--rm", "--net", "my-net", "--ip", address_of(h1, "c1"), IMAGE,
               "true", check=False)
    assert taken.returncode != 0 and "already in use" in taken.stderr


def test_network_connect_and_disconnect(lab: Lab) -> None:
    h0, h1 = lab.hosts
    dk(h0, *CREATE, "--subnet", "10.0.60.0/24", "-o", "vxlanID=60", "side")
    run_detached(h0, "two", "side")
    dk(h0, "network", "connect", "my-net", "two")
    assert pings(h0, "two", address_of(h1, "c1"))
    dk(h0, "network", "disconnect", "my-net", "two")
    assert "10.0.0." not in dk(h0, "exec", "two", "ip", "-4", "-o", "addr").stdout
    dk(h0, "rm", "-f", "two")
    dk(h0, "network", "rm", "side")
    assert doctor(lab, h0).returncode == 0


def test_a_published_port_is_reachable_from_outside_the_host(lab: Lab) -> None:
    h0 = lab.host("host0")
    dk(h0, "run", "-d", "--name", "web", "--net", "my-net", "-p", "8080:80", IMAGE,
       "httpd", "-f", "-p", "80", "-h", "/etc")
    hostname = dk(h0, "exec", "web", "cat", "/etc/hostname").stdout.strip()

    def fetch() -> str:
        return run([sys.executable, "-c", FETCH, f"http://{h0.vtep}:8080/hostname"],
                   netns=lab.underlay_ns, check=False).stdout.strip()
    assert eventually(lambda: fetch() == hostname, timeout=10)
    dk(h0, "rm", "-f", "web")
    assert fetch() == ""
    assert not docker_state(lab, h0)["rules"]


def test_egress_leaves_through_the_gateway_with_the_hosts_address(lab: Lab) -> None:
    h1 = lab.host("host1")
    server = subprocess.Popen(in_netns(lab.underlay_ns, [sys.executable, "-c", ECHO_SERVER,
                                                         lab.etcd_ip, str(ECHO_PORT)]))
    try:
        def ask() -> str:
            return dk(h1, "exec", "c1", "sh", "-c",
                      f"echo hello | nc -w 3 {lab.etcd_ip} {ECHO_PORT}", check=False).stdout
        assert eventually(lambda: "hello" in ask(), timeout=10)
        assert ask().split() == [h1.vtep, "hello"]  # masqueraded to host1's own address
    finally:
        server.kill()
        server.wait()


def test_a_docker_and_a_cni_container_on_one_network(lab: Lab) -> None:
    h0 = lab.host("host0")
    out = ctr.add_container(lab, "cni1", "host1")
    assert out.returncode == 0, out.stdout
    cni_ip = lab.containers["cni1"]["ip"]
    assert pings(h0, "c0", cni_ip)
    assert ctr.ping(lab.containers["cni1"]["netns"], address_of(h0, "c0")).ok
    assert ctr.del_container(lab, "cni1").returncode == 0


def overlayctl(lab: Lab, *args: str, doc: object = None) -> str:
    out = run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
               *args], netns=lab.underlay_ns, check=False,
              input=None if doc is None else json.dumps(doc).encode())
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


API_FROM_WEB = {"name": "api-from-web", "endpointSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"protocol": "TCP", "port": 80}]}]}


def test_policies_select_docker_containers_by_their_labels(lab: Lab) -> None:
    h0, h1 = lab.hosts
    dk(h1, "run", "-d", "--name", "api", "--net", "my-net", "--label", "overlay.label/app=api",
       IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc")
    web = run_detached_with(h0, "web", "overlay.label/app=web")
    other = run_detached_with(h0, "other", "overlay.label/app=other",
                              "overlay.label/Bad_=x", "maintainer=me")  # runs all the same
    api = address_of(h1, "api")

    def fetches(name: str) -> bool:  # busybox-static's wget crashes: HTTP by hand
        return "200 OK" in dk(h0, "exec", name, "sh", "-c", "printf 'GET /hostname HTTP/1.0"
                              f"\\r\\n\\r\\n' | nc -w 2 {api} 80", check=False).stdout
    assert eventually(lambda: fetches("web") and fetches("other"), timeout=15)  # no policy yet
    # The labels follow each Join (docker/labels.py); the invalid and unprefixed ones do not.
    ips = {name: address_of(h, name) for h, name in ((h0, web), (h0, other), (h1, "api"))}

    def labels() -> dict[str, dict[str, str]]:
        found = labels_by_ip(lab)
        return {name: found[ip] for name, ip in ips.items() if ip in found}
    assert eventually(lambda: labels() == {"web": {"app": "web"}, "other": {"app": "other"},
                                           "api": {"app": "api"}}, timeout=10), labels()
    table = overlayctl(lab, "endpoints")
    assert all(f"app={app}" in table for app in ("web", "other", "api")), table
    overlayctl(lab, "policy", "apply", "-f", "-", "--network", "my-net", doc=API_FROM_WEB)
    try:
        assert eventually(lambda: not fetches("other"), timeout=10)
        assert fetches("web")  # the label and the port
        assert not dk(h0, "exec", "web", "ping", "-c", "1", "-W", "1", api,
                      check=False).returncode == 0  # no ICMP rule
    finally:
        overlayctl(lab, "policy", "delete", "api-from-web", "--network", "my-net")
    assert eventually(lambda: fetches("other"), timeout=10)
    for h, name in ((h1, "api"), (h0, web), (h0, other)):
        dk(h, "rm", "-f", name)


def labels_by_ip(lab: Lab, network: str = "my-net") -> dict[str, dict[str, str]]:
    """Endpoint labels as `overlayctl endpoints` shows them, by address."""
    return {ip.split("/")[0]: row["labels"] for row in json.loads(overlayctl(
        lab, "endpoints", "--json")) if row["network"] == network for ip in row["ips"]}


def test_labels_given_to_network_connect_are_on_the_record_from_join(lab: Lab) -> None:
    h0 = lab.host("host0")
    dk(h0, *CREATE, "--subnet", "10.0.61.0/24", "-o", "vxlanID=61", "side2")
    dk(h0, "run", "-d", "--name", "conn", "--net", "side2", "--label", "overlay.label/tier=front",
       IMAGE, "sleep", "600")
    dk(h0, "network", "connect", "--driver-opt", "overlay.label/app=web", "my-net", "conn")
    ip = address_of(h0, "conn")
    assert labels_by_ip(lab)[ip].get("app") == "web"  # at once: Join wrote it, no window
    assert eventually(lambda: labels_by_ip(lab)[ip] == {"app": "web", "tier": "front"},
                      timeout=10), labels_by_ip(lab)[ip]
    dk(h0, "rm", "-f", "conn")
    dk(h0, "network", "rm", "side2")


def run_detached_with(h: LabHost, name: str, *labels: str) -> str:
    dk(h, "run", "-d", "--name", name, "--net", "my-net",
       *(a for label in labels for a in ("--label", label)), IMAGE, "sleep", "600")
    return name


def test_a_cni_gc_of_another_runtime_leaves_the_docker_endpoints(lab: Lab) -> None:
    """A runtime (podman, containerd) with a conflist of the Docker network's name lists only
    its own containers as valid: GC must not take Docker's (cni/housekeeping.py)."""
    h0, h1 = lab.hosts
    before = docker_state(lab, h0)
    assert before["etcd"] and before["ports"]  # c0's record, address and port
    conf = {**ctr.plugin_netconf(ctr.read_conflist(h0, "my-net")), "cniVersion": "1.1.0",
            "cni.dev/valid-attachments": []}
    out = ctr.cni_exec(lab.cni_path, "GC", container_id="", netns="", ifname="",
                       netconf=conf, host_dir=h0.dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert docker_state(lab, h0) == before
    assert pings(h0, "c0", address_of(h1, "c1"))


def test_rm_f_leaves_nothing(lab: Lab) -> None:
    h0, h1 = lab.hosts
    before = len(endpoint_keys(lab))
    dk(h1, "rm", "-f", "c1")
    assert len(endpoint_keys(lab)) == before - 1
    assert_clean(lab, h1)


def test_dockerd_restart_leaves_nothing(lab: Lab) -> None:
    h0 = lab.host("host0")
    assert endpoint_keys(lab)  # c0 runs on host0
    dockerd.stop_daemon(h0)  # it stops its containers first, through the driver
    assert_clean(lab, h0)
    dockerd.start_daemon(h0)
    assert "my-net" in dk(h0, "network", "ls").stdout
    dk(h0, "rm", "-f", "c0")
    dk(h0, "run", "--rm", "--net", "my-net", IMAGE, "true")  # the driver still serves it
    assert_clean(lab, h0)


def test_network_rm_leaves_nothing(lab: Lab) -> None:
    for h in lab.hosts:
        dk(h, "network", "rm", "my-net")
        assert_clean(lab, h)
    for h in lab.hosts:
        dk(h, *MY_NET)  # and it can be made again
