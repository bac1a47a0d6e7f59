"""DHCP in the lab: the standard `dhcp` IPAM daemon on every host, dnsmasq servers in containers.

The `dhcp` IPAM plugin (containernetworking-plugins) does no DHCP itself: it asks a daemon
(`dhcp daemon`, socket /run/cni/dhcp.sock) that enters the container's network namespace by
path, runs the DHCP client there and keeps renewing the lease. Each lab host runs its own,
in the host's network namespace and mount namespace (overlay.lab.hostmounts), so the `dhcp`
plugin that host's agent runs finds that host's daemon at the default path.

A DHCP server on the overlay is a container like any other, attached with `static` IPAM (a
server needs a known address), running dnsmasq on its eth0. Its answers reach clients on any
host: broadcasts take the network's flood rules, unicast the client MAC's rule, which exists
because the client's endpoint record is published before its DISCOVER (overlay/cni/leases.py).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Protocol

from overlay.lab import host as steps
from overlay.lab.hostmounts import cni_run_dir

DHCP_PLUGIN = "/usr/lib/cni/dhcp"


class HostDirs(Protocol):
    """What of a lab host this needs (topology.LabHost; not imported: topology imports us)."""

    @property
    def name(self) -> str: ...
    @property
    def netns(self) -> str: ...
    @property
    def dir(self) -> str: ...


def daemon_socket(h: HostDirs) -> str:
    """The daemon's socket as seen from outside the host's mount namespace."""
    return os.path.join(cni_run_dir(h.dir), "dhcp.sock")


def start_daemon(h: HostDirs) -> None:
    """`dhcp daemon` on host `h`, unless the machine has no dhcp plugin or it runs already."""
    if not os.access(DHCP_PLUGIN, os.X_OK) or os.path.exists(os.path.join(h.dir, "dhcp.pid")):
        return
    sock = daemon_socket(h)
    if os.path.exists(sock):
        os.unlink(sock)  # left by a daemon that was killed: it would refuse to listen
    steps.spawn([DHCP_PLUGIN, "daemon"], netns=h.netns, log=os.path.join(h.dir, "dhcp.log"),
                pidfile=os.path.join(h.dir, "dhcp.pid"), host_dir=h.dir)
    steps.wait_for(lambda: os.path.exists(sock), f"the dhcp daemon of {h.name}",
                   log=os.path.join(h.dir, "dhcp.log"))


def stop_daemon(h: HostDirs) -> None:
    steps.stop_pidfile(os.path.join(h.dir, "dhcp.pid"))


@dataclass(frozen=True)
class DhcpServer:
    name: str
    netns: str
    leasefile: str
    log: str

    def leases(self) -> dict[str, str]:
        """MAC -> leased address, from dnsmasq's lease file (expiry mac ip hostname clientid)."""
        try:
            with open(self.leasefile) as fh:
                rows = [line.split() for line in fh]
        except FileNotFoundError:
            return {}
        return {row[1]: row[2] for row in rows if len(row) >= 3}

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""


def servers_dir(workdir: str) -> str:
    return os.path.join(workdir, "dhcp")


def start_server(workdir: str, name: str, netns: str, *, first: str, last: str, netmask: str,
                 router: str | None = None, lease_time: str = "2m",
                 interface: str = "eth0") -> DhcpServer:
    """dnsmasq serving DHCP (no DNS) on `interface` of container namespace `netns`.

    `--no-ping`: dnsmasq would first ping an address before offering it, and wait for the
    silence; the overlay answers no ARP for an address nobody holds, so the ping only costs
    time. 2 minutes is the shortest lease dnsmasq hands out (renewal after half of it).
    """
    directory = servers_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    server = DhcpServer(name, netns, os.path.join(directory, f"{name}.leases"),
                        os.path.join(directory, f"{name}.log"))
    cmd = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
           "--user=root", f"--interface={interface}", "--bind-interfaces",
           f"--dhcp-range={first},{last},{netmask},{lease_time}", "--dhcp-authoritative",
           "--no-ping", f"--dhcp-leasefile={server.leasefile}", "--log-dhcp",
           f"--log-facility={server.log}"]
    if router is not None:
        cmd.append(f"--dhcp-option=option:router,{router}")
    steps.spawn(cmd, netns=netns, log=os.path.join(directory, f"{name}.out"),
                pidfile=os.path.join(directory, f"{name}.pid"))
    steps.wait_for(lambda: "DHCP, IP range" in server.log_text(), f"dnsmasq {name}",
                   log=server.log)
    return server


def stop_servers(workdir: str) -> None:
    for pidfile in glob.glob(os.path.join(servers_dir(workdir), "*.pid")):
        steps.stop_pidfile(pidfile)
