"""Containers in the lab: namespaces attached by executing the real `ovs` plugin.

cni_exec() does what libcni does for one plugin of a conflist: it copies the list's `name` and
`cniVersion` into the plugin's netconf, sets CNI_* in a clean environment, finds the plugin
by its `type` in CNI_PATH, and feeds the netconf on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from overlay.lab import host as steps
from overlay.lab.hostmounts import in_host_mounts
from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab, LabHost

DEFAULT_NETWORK = "my-net"


@dataclass(frozen=True)
class CniOutcome:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def plugin_netconf(conflist: dict[str, Any]) -> dict[str, Any]:
    conf = dict(conflist["plugins"][0])
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    return conf


def cni_exec(cni_path: str, command: str, *, container_id: str, netns: str, ifname: str,
             netconf: dict[str, Any] | bytes, cni_args: str = "",
             timeout: float = 150, host_dir: str | None = None) -> CniOutcome:
    """With `host_dir`, the plugin runs in that lab host's mount namespace, where the default
    agentSocket (/run/overlay/agent.sock) is that host's agent (overlay.lab.hostmounts)."""
    stdin = netconf if isinstance(netconf, bytes) else json.dumps(netconf).encode()
    plugin_type = "ovs"
    if isinstance(netconf, dict):
        plugin_type = str(netconf.get("type", "ovs"))
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": cni_path, "CNI_ARGS": cni_args,
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    plugin = next((os.path.join(d, plugin_type) for d in cni_path.split(":")
                   if os.path.exists(os.path.join(d, plugin_type))),
                  os.path.join(cni_path.split(":")[0], plugin_type))
    argv = in_host_mounts(host_dir, [plugin]) if host_dir else [plugin]
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=timeout)
    return CniOutcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def conflist_name(network: str) -> str:
    return f"10-{network}.conflist"


def conflist_path(h: LabHost, network: str) -> str:
    return os.path.join(h.cni_dir, conflist_name(network))


def define_network(lab: Lab, network: str, vni: int, subnet: str) -> None:
    """Record the network in etcd and write its conflist on every host (/etc/cni/net.d)."""
    run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
         "network-create", network, "--vni", str(vni), "--subnet", subnet],
        netns=lab.underlay_ns)
    for h in lab.hosts:
        steps.write_cni_config(conflist_path(h, network), network=network, vni=vni,
                               subnet=subnet, bridge=lab.bridge, agent_socket=h.socket)


def read_conflist(h: LabHost, network: str) -> dict[str, Any]:
    with open(conflist_path(h, network)) as fh:
        return dict(json.load(fh))


@dataclass(frozen=True)
class PingOutcome:
    ok: bool      # at least one reply
    summary: str  # ping's "packet loss" line, else its error

    @property
    def complete(self) -> bool:
        """Every request answered."""
        return self.ok and " 0% packet loss" in self.summary


def ping(netns: str, address: str, count: int = 3) -> PingOutcome:
    proc = run(["ping", "-c", str(count), "-i", "0.2", "-W", "1", address], netns=netns, check=False)
    summary = [ln for ln in proc.stdout.splitlines() if "packet loss" in ln]
    return PingOutcome(proc.returncode == 0, summary[0] if summary else proc.stderr.strip())


def result_address(result: dict[str, Any]) -> str:
    """The first address of a result, in any version's shape (0.1.0/0.2.0: ip4, ip6)."""
    first = result["ips"][0]["address"] if "ips" in result else \
        (result.get("ip4") or result["ip6"])["ip"]
    return str(first).split("/")[0]


def add_container(lab: Lab, name: str, host: str, network: str = DEFAULT_NETWORK,
                  ifname: str = "eth0", netconf: dict[str, Any] | None = None,
                  labels: dict[str, str] | None = None) -> CniOutcome:
    """Attach a new container `name` on `host`: with the host's conflist for `network`, or
    with `netconf` as given (then it is recorded for DEL). CNI_PATH also holds the standard
    plugins, for delegated IPAM (static, dhcp, host-local). `labels` go in as a runtime sends
    them, in args.cni.labels (overlay/cni/labels.py)."""
    h = lab.host(host)
    netns = f"{lab.prefix}-{name}"
    add_netns(netns)
    container_id = f"{lab.prefix}-{name}"
    conf = netconf or plugin_netconf(read_conflist(h, network))
    if labels:
        conf = with_labels(conf, labels)
    outcome = cni_exec(lab.cni_path, "ADD", container_id=container_id,
                       netns=f"/var/run/netns/{netns}", ifname=ifname, netconf=conf,
                       host_dir=h.dir)
    if outcome.returncode == 0:
        lab.containers[name] = {"host": host, "netns": netns, "network": str(conf["name"]),
                                "container_id": container_id, "ifname": ifname,
                                "ip": result_address(outcome.json())}
        if netconf is not None:
            lab.containers[name]["netconf"] = json.dumps(netconf)
        lab.save()
    else:
        del_netns(netns)
    return outcome


def with_labels(conf: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """A copy of `conf` whose args.cni.labels are `labels` (the CNI conventions' shape)."""
    args = dict(conf.get("args") or {})
    args["cni"] = {**(args.get("cni") or {}),
                   "labels": [{"key": k, "value": v} for k, v in labels.items()]}
    return {**conf, "args": args}


def del_container(lab: Lab, name: str) -> CniOutcome:
    c = lab.containers[name]
    h = lab.host(c["host"])
    conf = json.loads(c["netconf"]) if "netconf" in c else \
        plugin_netconf(read_conflist(h, c["network"]))
    outcome = cni_exec(lab.cni_path, "DEL", container_id=c["container_id"],
                       netns=f"/var/run/netns/{c['netns']}", ifname=c["ifname"],
                       netconf=conf, host_dir=h.dir)
    if outcome.returncode == 0:
        del_netns(c["netns"])
        del lab.containers[name]
        lab.save()
    return outcome


def wait_converged(lab: Lab, timeout: float = 10.0) -> None:
    """Wait until every host's agent has programmed every lab container on the other hosts
    that shares a network with one of its own.

    An endpoint reaches the other hosts through their etcd watch, a few milliseconds after the
    ADD that created it returned. Pinging inside that window would measure the watch, not the
    dataplane, so the demo and the tests wait for it first.
    """
    from overlay.cli.overlayctl import status  # deferred: gRPC is only needed here

    def converged() -> bool:
        for h in lab.hosts:
            # An agent follows only the networks it has containers in (agent/networks.py).
            mine = {c["network"] for c in lab.containers.values() if c["host"] == h.name}
            expected = sum(1 for c in lab.containers.values()
                           if c["host"] != h.name and c["network"] in mine)
            if int(status(h.socket).get("remote_endpoints", 0)) < expected:
                return False
            # Userspace tunneling also needs each other VTEP's MAC (the agent primes it).
            neighbours = run(["ovs-appctl", "-t", os.path.join(h.ovs_dir, "ovs-vswitchd.ctl"),
                              "tnl/neigh/show"], check=False).stdout
            if any(other.vtep not in neighbours for other in lab.hosts if other is not h):
                return False
        return True

    steps.wait_for(converged, "agents to learn every container", timeout)
