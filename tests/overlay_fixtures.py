"""pytest plugin: real labs, namespaces and CNI calls for the integration and e2e tiers.

    lab_factory(hosts=N)  a netns lab with its own etcd and per-host OVS + agent, torn down at
                          the end of the module (OVERLAY_TEST_KEEP=1 keeps it for debugging);
                          like `make lab`, etcd runs with TLS, client certificates and a user per
                          host (OVERLAY_TEST_TLS=0, or tls=False, for plain http); a cluster
                          (etcd_members > 1) is plain http
    netns                 a fresh, uniquely named network namespace, deleted afterwards
    two_bridge_host       a one-host lab (no network) whose switch also has the empty bridges
                          bra and brb, to compare two ways of filling a table (module)
    cni                   runs the real `ovs` plugin executable the way a runtime does
    libcni_driver         tests/libcni/driver.go built against Debian's libcni (session)
    netns_factory         fresh network namespaces on demand, deleted afterwards
    reference_plugins     the directory of Debian's reference CNI plugins (or a skip)

Nothing here is mocked: these fixtures start ovsdb-server, ovs-vswitchd, etcd and agents.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from libcni.build import REFERENCE_PLUGINS, build_driver, why_not_buildable

from overlay.lab import containers as ctr
from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab, LabHost

KEEP = os.environ.get("OVERLAY_TEST_KEEP") == "1"
DEFAULT_TLS = os.environ.get("OVERLAY_TEST_TLS", "1") != "0"  # what `make lab` runs by default
NEEDED = ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "etcd", "etcdctl", "ip",
          "ethtool", "ping", "tcpdump")


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, OVS)"
    missing = [t for t in NEEDED if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)} (run `make deps`)" if missing else None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _why_not_runnable()
    for item in items:
        if "/unit/" not in str(item.fspath) and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def eventually(predicate: Callable[[], bool], timeout: float = 20.0,
               interval: float = 0.2) -> bool:
    """Whether `predicate` holds within `timeout` seconds (polled every `interval`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def with_c0_and_c1(lab: Lab) -> Lab:
    """The lab's demo pair, as most e2e modules start: c0 on host0 and c1 on host1 in the
    lab's network, each agent having learnt the other's container."""
    for name, host in (("c0", "host0"), ("c1", "host1")):
        out = ctr.add_container(lab, name, host)
        assert out.returncode == 0, out.stdout
    ctr.wait_converged(lab)
    return lab


def new_prefix() -> str:
    return "t" + uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
def lab_factory() -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(hosts: int = 2, network: tuple[str, int, str] | None = ("my-net", 42,
                                                                    "10.0.0.0/24"),
             tls: bool | None = None, etcd_members: int = 1, bridge: str = "br-int") -> Lab:
        if tls is None:
            tls = DEFAULT_TLS and etcd_members == 1
        lab = Lab(workdir=tempfile.mkdtemp(prefix="overlay-lab-"), prefix=new_prefix(), tls=tls,
                  etcd_members=etcd_members, bridge=bridge)
        labs.append(lab)
        lab.up(hosts)
        if network:
            ctr.define_network(lab, *network)
        return lab

    yield make
    for lab in labs:
        if KEEP:
            print(f"keeping lab {lab.prefix} in {lab.workdir}")
        else:
            lab.down()


@pytest.fixture(scope="module")
def two_bridge_host(lab_factory: Callable[..., Lab]) -> LabHost:
    lab = lab_factory(hosts=1, network=None)
    h = lab.hosts[0]
    for bridge in ("bra", "brb"):
        run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "--may-exist", "add-br", bridge,
             "--", "set", "bridge", bridge, "datapath_type=netdev", "fail_mode=secure"])
    return h


@pytest.fixture
def netns() -> Iterator[str]:
    name = new_prefix() + "-ns"
    add_netns(name)
    yield f"/var/run/netns/{name}"
    del_netns(name)


class Cni:
    """Calls the plugin of a lab host with a netconf built from the host's conflist."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def netconf(self, host: LabHost, network: str = "my-net", **overrides: Any) -> dict[str, Any]:
        conf = ctr.plugin_netconf(ctr.read_conflist(host, network))
        conf.update(overrides)
        return conf

    def __call__(self, command: str, netconf: dict[str, Any] | bytes, *, container_id: str,
                 netns: str, ifname: str = "eth0", cni_path: str | None = None) -> ctr.CniOutcome:
        return ctr.cni_exec(cni_path or self.lab.cni_bin, command, container_id=container_id,
                            netns=netns, ifname=ifname, netconf=netconf)


def host_snapshot(lab: Lab, host: LabHost, container_netns: str | None = None) -> dict[str, Any]:
    """Everything ADD may touch: OVS rows, links of the host and container, etcd keys."""
    vsctl = ["ovs-vsctl", f"--db=unix:{host.ovs_dir}/db.sock"]
    ports = run([*vsctl, "--format=json", "--columns=name,external_ids,ofport", "list",
                 "Interface"]).stdout
    links = run(["ip", "-o", "link", "show"], netns=host.netns).stdout
    links = sorted(line.split(":")[1].strip() for line in links.splitlines())
    etcd = run(lab.etcdctl("get", "--prefix", "/overlay/v1/", "--keys-only"),
               netns=lab.underlay_ns).stdout.split()
    snap: dict[str, Any] = {"ovs": sorted(json.loads(ports)["data"], key=str), "links": links,
                            "etcd": sorted(etcd)}
    if container_netns:
        snap["container"] = run(["ip", "-o", "link", "show"], netns=os.path.basename(
            container_netns)).stdout.count("\n")
    return snap


def capture(netns: str, iface: str, expr: str, seconds: float, out: str,
            direction: str = "inout") -> subprocess.Popen[bytes]:
    """tcpdump on `iface` in `netns` for at most `seconds`, writing pcap to `out`.

    Returns once tcpdump is listening, so nothing sent afterwards is missed.
    """
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "timeout", str(seconds), "tcpdump",
                             "-Z", "root", "--immediate-mode", "-Q", direction, "-i", iface,
                             "-U", "-n", "-w", out, *expr.split()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert "listening on" in line, f"tcpdump did not start: {line}"
    return proc


def received(workdir: str, netns: str, marker: str, send: Callable[[], None]) -> bool:
    """Whether a frame carrying `marker` reached eth0 in `netns` while `send()` ran."""
    pcap = os.path.join(workdir, f"{marker}.pcap")
    proc = capture(netns, "eth0", "", 10, pcap, direction="in")
    send()
    time.sleep(0.5)
    proc.terminate()
    proc.wait()
    with open(pcap, "rb") as fh:
        return marker.encode() in fh.read()


def pcap_frames(path: str) -> list[bytes]:
    """The Ethernet frames of a classic pcap file."""
    with open(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frames.append(data[offset + 16:offset + 16 + caplen])
        offset += 16 + caplen
    return frames


def vxlan_vnis(path: str) -> list[int]:
    """The VNI of every VXLAN (UDP 4789) packet in an Ethernet pcap."""
    vnis = []
    for frame in pcap_frames(path):
        if len(frame) < 14 + 20 + 8 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if frame[14 + 9] != 17 or struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 4789:
            continue
        vxlan = frame[udp + 8:udp + 16]
        vnis.append(int.from_bytes(vxlan[4:7], "big"))
    return vnis


# --- libcni: the library runtimes link, driving our plugin and the reference ones -----------


@pytest.fixture(scope="session")
def libcni_driver() -> Iterator[str]:
    """The path of tests/libcni/driver.go built with `go build` (build cache in a temp dir)."""
    reason = why_not_buildable()
    if reason:
        pytest.skip(reason)
    outdir = tempfile.mkdtemp(prefix="libcni-driver-")
    try:
        yield build_driver(outdir)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], str]]:
    """Call it for another fresh network namespace; returns its path, like `netns`."""
    made: list[str] = []

    def make() -> str:
        name = new_prefix() + "-ns"
        add_netns(name)
        made.append(name)
        return f"/var/run/netns/{name}"

    yield make
    for name in made:
        del_netns(name)


REFERENCE_NEEDED = ("bridge", "host-local", "tuning", "portmap", "bandwidth")


@pytest.fixture(scope="session")
def reference_plugins() -> str:
    """Debian's containernetworking-plugins directory, with the plugins the tests chain."""
    missing = [p for p in REFERENCE_NEEDED if not os.access(os.path.join(REFERENCE_PLUGINS, p), os.X_OK)]
    if missing:
        pytest.skip(f"reference CNI plugins missing from {REFERENCE_PLUGINS}: {', '.join(missing)} "
                    "(apt: containernetworking-plugins)")
    if shutil.which("iptables") is None:
        pytest.skip("the portmap plugin needs iptables (apt: iptables)")
    return REFERENCE_PLUGINS


def ovs_plugin(host: LabHost, **overrides: Any) -> dict[str, Any]:
    """The `ovs` entry of a conflist for a lab host (network my-net, VNI 42, 10.0.0.0/24)."""
    conf: dict[str, Any] = {"type": "ovs", "bridge": "br-int", "vxlanID": 42,
                            "agentSocket": host.socket,
                            "ipam": {"type": "overlay", "subnet": "10.0.0.0/24"}}
    conf.update(overrides)
    return conf


def container_addresses(netns: str, ifname: str = "eth0") -> list[str]:
    """The global addresses (CIDR form) on `ifname` inside a netns given by path or name."""
    out = run(["ip", "-j", "addr", "show", "dev", ifname], netns=os.path.basename(netns)).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
            for a in link.get("addr_info", []) if a.get("scope") == "global"]


def container_link(netns: str, ifname: str = "eth0") -> dict[str, Any]:
    """`ip -j link show` of one interface inside a netns given by path or name."""
    out = run(["ip", "-j", "link", "show", "dev", ifname], netns=os.path.basename(netns)).stdout
    return dict(json.loads(out)[0])
