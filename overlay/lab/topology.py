"""The netns lab: an underlay namespace with a bridge and etcd, N host namespaces, containers.

    <prefix>-ul        underlay: Linux bridge `ul` with 172.31.0.254 (etcd listens there)
    <prefix>-h<i>      host i: `eth0` = 172.31.0.<i+1> on the underlay, own OVS + agent
    <prefix>-<name>    a container: a namespace wired up by the `ovs` CNI plugin

Everything a lab makes lives under `workdir` (files) or is named after `prefix` (namespaces,
links), so `down()` can remove all of it, and several labs (the tests') can coexist.

By default (`tls=True`) etcd serves https only, requires client certificates and has its
authentication on: a CA, etcd's server certificate (for the underlay address and 127.0.0.1),
one client certificate per host (CN = its etcd user, the host's name), one for the operator
(overlayctl) and one for etcd's root are made with openssl in `<workdir>/pki` (overlay.lab.pki);
users and roles are set up by overlay.lab.etcdauth: a host may read and write /overlay/v1/ and
nothing else. `tls=False` keeps the old plain-http etcd, open to anyone who reaches its port.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from overlay.lab import dhcp, etcdauth, pki
from overlay.lab import host as steps
from overlay.lab.shell import add_netns, del_netns, netns_exists, run
from overlay.store.tls import TlsFiles

ETCD_PORT = steps.ETCD_PORT
Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass
STANDARD_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins
METRICS_PORT = 10390  # overlay.agent.metrics_server.DEFAULT_PORT (not imported: no prometheus here)


def wire_checksums(ifname: str, netns: str) -> None:
    """Make an underlay link behave like a wire: frames leave it with complete checksums.

    A veth hands frames on with checksums still to be filled in by "hardware". A real NIC on
    the far side of a real wire never sees that, and OVS's userspace datapath (reading eth0
    through AF_PACKET and passing frames to br-phy's tap) does not complete them, so the host's
    kernel would drop every TCP segment from etcd. Computing checksums in software on the
    underlay side of the lab fixes the emulation, not the product.
    """
    run(["ethtool", "-K", ifname, "tx", "off"], netns=netns)


# A GET in the host's namespace, with whatever python3 the machine has: status line, then body.
_HTTP_GET = """
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=10)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(f"{code}\\n" + body.decode())
"""


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
    def metrics_url(self) -> str:
        """The agent's /metrics, /healthz, /readyz, from inside the host's namespace."""
        return f"http://127.0.0.1:{METRICS_PORT}"

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
    tls: bool = True  # etcd over https, client certificates, a user and a role per host
    etcd_members: int = 1  # 3: a cluster of three members on .254, .253, .252
    bridge: str = "br-int"  # the integration bridge every host's agent manages

    # --- naming -----------------------------------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def etcd_ip(self) -> str:
        net = ipaddress.ip_network(self.underlay)
        return str(net.broadcast_address - 1)

    @property
    def etcd_scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def etcd_url(self) -> str:
        return f"{self.etcd_scheme}://{self.etcd_ip}:{ETCD_PORT}"

    @property
    def member_ips(self) -> list[str]:
        net = ipaddress.ip_network(self.underlay)
        return [str(net.broadcast_address - 1 - i) for i in range(self.etcd_members)]

    @property
    def etcd_urls(self) -> list[str]:
        """What agents are given: every member."""
        return [f"{self.etcd_scheme}://{ip}:{ETCD_PORT}" for ip in self.member_ips]

    @property
    def local_etcd_url(self) -> str:
        """etcd as seen from inside the underlay namespace."""
        if self.etcd_members > 1:
            return ",".join(self.etcd_urls)
        return f"{self.etcd_scheme}://127.0.0.1:{ETCD_PORT}"

    @property
    def pki_dir(self) -> str:
        return os.path.join(self.workdir, "pki")

    @property
    def pki(self) -> pki.LabPki:
        return pki.lab_pki_paths(self.pki_dir)

    @property
    def etcd_client_tls(self) -> TlsFiles:
        """What overlayctl (the operator) presents to etcd (nothing in a plain lab)."""
        if not self.tls:
            return TlsFiles()
        return TlsFiles(self.pki.ca.cert, self.pki.client.cert, self.pki.client.key)

    def host_tls(self, host: str) -> TlsFiles:
        """What host `host`'s agent presents to etcd: its own certificate."""
        if not self.tls:
            return TlsFiles()
        pair = self.pki.host(host)
        return TlsFiles(self.pki.ca.cert, pair.cert, pair.key)

    def etcdctl(self, *args: str, url: str | None = None, as_: TlsFiles | None = None) -> list[str]:
        """An etcdctl command line for this lab's etcd (run it in the underlay namespace), as
        the operator unless `as_` names other certificate files (root_tls, host_tls)."""
        files = as_ or self.etcd_client_tls
        auth = ["--cacert", files.ca, "--cert", files.cert, "--key", files.key] if self.tls else []
        return ["etcdctl", "--endpoints", url or self.local_etcd_url, *auth, *args]

    @property
    def root_tls(self) -> TlsFiles:
        return TlsFiles(self.pki.ca.cert, self.pki.root.cert, self.pki.root.key)

    def _etcdctl_root(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return run(self.etcdctl(*args, as_=self.root_tls), netns=self.underlay_ns, check=False)

    def overlayctl_etcd_args(self) -> list[str]:
        """overlayctl's etcd flags for this lab, from inside the underlay namespace."""
        files = self.etcd_client_tls
        auth = ["--etcd-ca", files.ca, "--etcd-cert", files.cert, "--etcd-key", files.key]
        return ["--etcd", self.local_etcd_url, *(auth if self.tls else [])]

    def agent_etcd_settings(self, host: str) -> dict[str, str]:
        """The TLS keys of host `host`'s agent configuration (none in a plain lab)."""
        files = self.host_tls(host)
        if not self.tls:
            return {}
        return {"etcd_ca": files.ca, "etcd_cert": files.cert, "etcd_key": files.key}

    @property
    def state_file(self) -> str:
        return os.path.join(self.workdir, "lab.json")

    @property
    def cni_bin(self) -> str:
        return os.path.join(self.workdir, "cni-bin")

    @property
    def cni_path(self) -> str:
        """CNI_PATH for the lab's runtime calls: our plugin, then the standard plugins."""
        return f"{self.cni_bin}:{STANDARD_PLUGINS}"

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

    def up(self, count: int, progress: Progress = _quiet) -> None:
        """Underlay and etcd, then hosts until there are `count`; `progress` hears each step
        (the CLI prints them: bringing up a host takes seconds, and a lab of several, minutes)."""
        started = time.monotonic()
        os.makedirs(self.workdir, exist_ok=True)
        progress(f"underlay {self.underlay_ns} and etcd ({self.etcd_scheme}) ...")
        self._up_underlay()
        self._install_plugin()
        self.save()
        progress(f"  etcd answers ({time.monotonic() - started:.1f} s)")
        for i in range(len(self.hosts), count):
            t = time.monotonic()
            progress(f"host {i + 1}/{count}: host{i}: namespace, OVS, agent ...")
            self.add_host(f"host{i}")
            progress(f"  host{i} up in {time.monotonic() - t:.1f} s "
                     f"({time.monotonic() - started:.1f} s so far)")

    def _up_underlay(self) -> None:
        ns = self.underlay_ns
        add_netns(ns)
        net = ipaddress.ip_network(self.underlay)
        if run(["ip", "link", "show", "ul"], netns=ns, check=False).returncode != 0:
            run(["ip", "link", "add", "ul", "type", "bridge"], netns=ns)
            for ip in self.member_ips:
                run(["ip", "addr", "add", f"{ip}/{net.prefixlen}", "dev", "ul"], netns=ns)
            run(["ip", "link", "set", "ul", "up"], netns=ns)
            wire_checksums("ul", ns)
        self.start_etcd()

    @property
    def etcd_dir(self) -> str:
        return os.path.join(self.workdir, "etcd")

    def member_pidfile(self, index: int) -> str:
        return os.path.join(self.etcd_dir, f"m{index}.pid")

    def start_etcd_member(self, index: int) -> None:
        """One member of a multi-member lab (plain http), unless it runs already."""
        if os.path.exists(self.member_pidfile(index)):
            return
        ips = self.member_ips
        steps.spawn(steps.etcd_member_command(f"m{index}", os.path.join(self.etcd_dir, f"m{index}"),
                                              ips[index], {f"m{i}": ip for i, ip in enumerate(ips)}),
                    netns=self.underlay_ns, log=os.path.join(self.etcd_dir, f"m{index}.log"),
                    pidfile=self.member_pidfile(index))

    def stop_etcd_member(self, index: int) -> None:
        steps.stop_pidfile(self.member_pidfile(index))

    def start_etcd(self) -> None:
        """etcd in the underlay namespace (TLS: certificates first), unless it runs already."""
        if self.etcd_members > 1:
            if self.tls:
                raise ValueError("a multi-member etcd lab is plain http for now")
            os.makedirs(self.etcd_dir, exist_ok=True)
            for index in range(self.etcd_members):
                self.start_etcd_member(index)
            steps.wait_for(lambda: run(self.etcdctl("endpoint", "health"), netns=self.underlay_ns,
                                       check=False).returncode == 0, "the etcd cluster", timeout=40,
                           log=os.path.join(self.etcd_dir, "m0.log"))
            return
        ns, etcd_dir = self.underlay_ns, self.etcd_dir
        os.makedirs(etcd_dir, exist_ok=True)
        if os.path.exists(os.path.join(etcd_dir, "etcd.pid")):
            return
        server_tls = None
        if self.tls:
            made = pki.lab_pki(self.pki_dir, [self.etcd_ip, "127.0.0.1"])
            server_tls = steps.EtcdServerTls(made.server.cert, made.server.key, made.ca.cert)
        steps.spawn(steps.etcd_command("lab", os.path.join(etcd_dir, "data"), self.etcd_ip,
                                       tls=server_tls),
                    netns=ns, log=os.path.join(etcd_dir, "etcd.log"),
                    pidfile=os.path.join(etcd_dir, "etcd.pid"))
        steps.wait_for(lambda: run(self.etcdctl("endpoint", "health", url=self.etcd_url),
                                   netns=ns, check=False).returncode == 0,
                       "etcd", log=os.path.join(etcd_dir, "etcd.log"))
        if self.tls:
            etcdauth.enable(self._etcdctl_root)

    def stop_etcd(self) -> None:
        steps.stop_pidfile(os.path.join(self.etcd_dir, "etcd.pid"))
        for index in range(self.etcd_members if self.etcd_members > 1 else 0):
            self.stop_etcd_member(index)

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
        if self.tls:  # its own certificate and etcd user, before its agent first dials etcd
            pki.host_cert(self.pki_dir, self.pki.ca, name)
            etcdauth.add_host(self._etcdctl_root, name)
        steps.write_agent_config(
            h.agent_config, host=name, bridge=self.bridge, underlay_interface="eth0",
            underlay_ip=h.vtep,
            etcd_endpoints=self.etcd_urls, ovsdb=paths.endpoint, ovs_rundir=h.ovs_dir,
            socket=h.socket, datapath="netdev",  # the same on every machine, module or not
            # Each host netns has its own loopback; only the host itself reaches it (not its
            # containers through their gateway address).
            metrics_address=f"127.0.0.1:{METRICS_PORT}",
            # A lab agent restarts in about a second, well inside its 10 s lease; a short grace
            # keeps a lost host's effect (tests/e2e/test_faults.py) quick to see.
            host_grace=5,
            **self.agent_etcd_settings(name))
        self.start_agent(h)
        dhcp.start_daemon(h)
        return h

    def start_agent(self, h: LabHost) -> None:
        steps.start_agent(h.agent_config, netns=h.netns, log=h.agent_log,
                          pidfile=h.agent_pidfile, socket=h.socket, host_dir=h.dir)

    def agent_http(self, h: LabHost, path: str = "/metrics") -> tuple[int, str]:
        """GET `path` from the agent's metrics listener, from inside its host's namespace
        (the way a node-local Prometheus or a kubelet probe reaches it): (status, body)."""
        proc = run(["python3", "-c", _HTTP_GET, h.metrics_url + path], netns=h.netns, check=False,
                   timeout=15)
        status, _, body = proc.stdout.partition("\n")
        if not status.isdigit():
            raise RuntimeError(f"no answer from {h.metrics_url}{path}: {proc.stderr.strip()}")
        return int(status), body

    def stop_agent(self, h: LabHost) -> None:
        steps.stop_pidfile(h.agent_pidfile)

    # --- tear-down --------------------------------------------------------------------------

    def down(self) -> None:
        dhcp.stop_servers(self.workdir)
        for h in self.hosts:
            dhcp.stop_daemon(h)
            steps.stop_pidfile(h.agent_pidfile)
            steps.stop_ovs(h.ovs_dir)
        self.stop_etcd()
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
