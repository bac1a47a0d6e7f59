"""The netns lab: an underlay namespace with a bridge and etcd, N host namespaces, containers.

    <prefix>-ul        underlay: Linux bridge `ul` with 172.31.0.254 (etcd listens there)
    <prefix>-h<i>      host i: `eth0` = 172.31.0.<i+1> on the underlay, own OVS + agent
    <prefix>-<name>    a container: a namespace wired up by the `ovs` CNI plugin

Everything a lab makes lives under `workdir` (files) or is named after `prefix` (namespaces,
links), so `down()` can remove all of it, and several labs (the tests') can coexist.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from dataclasses import asdict, dataclass, field

from overlay.lab import host as steps
from overlay.lab.shell import add_netns, del_netns, netns_exists, run

ETCD_PORT = steps.ETCD_PORT


def wire_checksums(ifname: str, netns: str) -> None:
    """Make an underlay link behave like a wire: frames leave it with complete checksums.

    A veth hands frames on with checksums still to be filled in by "hardware". A real NIC on
    the far side of a real wire never sees that, and OVS's userspace datapath (reading eth0
    through AF_PACKET and passing frames to br-phy's tap) does not complete them, so the host's
    kernel would drop every TCP segment from etcd. Computing checksums in software on the
    underlay side of the lab fixes the emulation, not the product.
    """
    run(["ethtool", "-K", ifname, "tx", "off"], netns=netns)


@dataclass
class LabHost:
    name: str
    netns: str
    vtep: str
    dir: str

    @property
    def ovs_dir(self) -> str:
        return os.path.join(self.dir, "ovs")

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "agent.sock")

    @property
    def agent_config(self) -> str:
        return os.path.join(self.dir, "agent.toml")

    @property
    def agent_log(self) -> str:
        return os.path.join(self.dir, "agent.log")

    @property
    def agent_pidfile(self) -> str:
        return os.path.join(self.dir, "agent.pid")

    @property
    def cni_dir(self) -> str:
        return os.path.join(self.dir, "cni")


@dataclass
class Lab:
    workdir: str = "/run/overlay-lab"
    prefix: str = "ovl"
    underlay: str = "172.31.0.0/24"
    hosts: list[LabHost] = field(default_factory=list)
    containers: dict[str, dict[str, str]] = field(default_factory=dict)

    # --- naming -----------------------------------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def etcd_ip(self) -> str:
        net = ipaddress.ip_network(self.underlay)
        return str(net.broadcast_address - 1)

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_ip}:{ETCD_PORT}"

    @property
    def state_file(self) -> str:
        return os.path.join(self.workdir, "lab.json")

    @property
    def cni_bin(self) -> str:
        return os.path.join(self.workdir, "cni-bin")

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in the lab (hosts: {[h.name for h in self.hosts]})")

    # --- persistence ------------------------------------------------------------------------

    def save(self) -> None:
        with open(self.state_file, "w") as fh:
            json.dump(asdict(self), fh, indent=2)

    @classmethod
    def load(cls, workdir: str) -> Lab:
        with open(os.path.join(workdir, "lab.json")) as fh:
            data = json.load(fh)
        data["hosts"] = [LabHost(**h) for h in data["hosts"]]
        return cls(**data)

    # --- bring-up ---------------------------------------------------------------------------

    def up(self, count: int) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self._up_underlay()
        self._install_plugin()
        self.save()
        for i in range(len(self.hosts), count):
            self.add_host(f"host{i}")

    def _up_underlay(self) -> None:
        ns = self.underlay_ns
        add_netns(ns)
        net = ipaddress.ip_network(self.underlay)
        if run(["ip", "link", "show", "ul"], netns=ns, check=False).returncode != 0:
            run(["ip", "link", "add", "ul", "type", "bridge"], netns=ns)
            run(["ip", "addr", "add", f"{self.etcd_ip}/{net.prefixlen}", "dev", "ul"], netns=ns)
            run(["ip", "link", "set", "ul", "up"], netns=ns)
            wire_checksums("ul", ns)
        etcd_dir = os.path.join(self.workdir, "etcd")
        os.makedirs(etcd_dir, exist_ok=True)
        if not os.path.exists(os.path.join(etcd_dir, "etcd.pid")):
            steps.spawn(steps.etcd_command("lab", os.path.join(etcd_dir, "data"), self.etcd_ip),
                        netns=ns, log=os.path.join(etcd_dir, "etcd.log"),
                        pidfile=os.path.join(etcd_dir, "etcd.pid"))
            steps.wait_for(lambda: run(["etcdctl", "--endpoints", self.etcd_url, "endpoint",
                                        "health"], netns=ns, check=False).returncode == 0,
                           "etcd", log=os.path.join(etcd_dir, "etcd.log"))

    def _install_plugin(self) -> None:
        steps.install_plugin(self.cni_bin)

    def add_host(self, name: str) -> LabHost:
        index = len(self.hosts)
        net = ipaddress.ip_network(self.underlay)
        h = LabHost(name=name, netns=f"{self.prefix}-h{index}",
                    vtep=str(net.network_address + index + 1),
                    dir=os.path.join(self.workdir, name))
        os.makedirs(h.cni_dir, exist_ok=True)
        add_netns(h.netns)
        outside = f"{self.prefix}u{index}"
        if not run(["ip", "link", "show", "eth0"], netns=h.netns, check=False).returncode == 0:
            run(["ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0",
                 "netns", h.netns])
            run(["ip", "link", "set", outside, "netns", self.underlay_ns])
            run(["ip", "link", "set", outside, "master", "ul", "up"], netns=self.underlay_ns)
            wire_checksums(outside, self.underlay_ns)
            run(["ip", "addr", "add", f"{h.vtep}/{net.prefixlen}", "dev", "eth0"], netns=h.netns)
            run(["ip", "link", "set", "eth0", "up"], netns=h.netns)
        self.hosts.append(h)
        self.save()
        paths = steps.start_ovs(h.ovs_dir, h.netns)
        steps.write_agent_config(
            h.agent_config, host=name, underlay_interface="eth0", underlay_ip=h.vtep,
            etcd_endpoints=[self.etcd_url], ovsdb=paths.endpoint, ovs_rundir=h.ovs_dir,
            socket=h.socket, datapath="netdev")  # the same on every machine, module or not
        self.start_agent(h)
        return h

    def start_agent(self, h: LabHost) -> None:
        steps.start_agent(h.agent_config, netns=h.netns, log=h.agent_log,
                          pidfile=h.agent_pidfile, socket=h.socket)

    def stop_agent(self, h: LabHost) -> None:
        steps.stop_pidfile(h.agent_pidfile)

    # --- tear-down --------------------------------------------------------------------------

    def down(self) -> None:
        for h in self.hosts:
            steps.stop_pidfile(h.agent_pidfile)
            steps.stop_ovs(h.ovs_dir)
        steps.stop_pidfile(os.path.join(self.workdir, "etcd", "etcd.pid"))
        for name in list(self.containers):
            del_netns(self.containers[name]["netns"])
        for h in self.hosts:
            del_netns(h.netns)
        del_netns(self.underlay_ns)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def namespaces(self) -> list[str]:
        names = [self.underlay_ns] + [h.netns for h in self.hosts]
        names += [c["netns"] for c in self.containers.values()]
        return [n for n in names if netns_exists(n)]
