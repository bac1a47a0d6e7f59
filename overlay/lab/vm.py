"""python -m overlay.lab.vm: the per-host steps on a real machine, as the Vagrant VMs run them.

The netns lab (python -m overlay.lab) emulates each host with a namespace and its own OVS. Here
a machine is one host: the system's OVS with the kernel datapath, etcd and overlay-agent as
systemd units, and containers as namespaces attached by the `ovs` plugin in /opt/cni/bin, the
way a runtime would. Both labs build hosts from the same steps (overlay.lab.host and
overlay.lab.containers), so what the netns lab tests is what the VMs run.

    etcd --listen IP [--name N] [--host H ...]
                                       overlay-etcd.service, clients on IP:2379 and 127.0.0.1:2379;
                                       https, client certificates, an etcd user per host H
                                       (--no-tls: plain http, no users)
    host --etcd URL (--underlay-ip IP | --underlay-interface IF) [--name N] [--no-tls]
                                       system OVS, `overlay.install` (the shipped
                                       overlay-agent.service, the plugin in /opt/cni/bin),
                                       /etc/overlay/agent.toml for this lab, the agent started,
                                       network my-net (VNI 42, 10.0.0.0/24) recorded in etcd,
                                       its conflist in /etc/cni/net.d; with TLS (an https URL)
                                       the certificates Vagrant uploaded (overlay.lab.vm_tls)
    container NAME                     namespace NAME attached to my-net through CNI ADD
    ping NAME TARGET                   from container NAME to an IP or to another container
                                       (looked up in etcd); exit status 0 if replies came back

Every command can run again (`vagrant provision`): it converges instead of failing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from overlay import install as installer
from overlay.agent import config as agent_config
from overlay.cli import overlayctl
from overlay.errors import CniError, Code
from overlay.lab import containers as ctr
from overlay.lab import etcdauth, vm_tls
from overlay.lab import host as steps
from overlay.lab.shell import add_netns, del_netns, netns_exists, run
from overlay.lab.systemd import enable, install_unit, journal_tail, systemctl, systemd_unit, unit_state
from overlay.store.tls import TlsFiles

AGENT_CONFIG = "/etc/overlay/agent.toml"
AGENT_SOCKET = "/run/overlay/agent.sock"
AGENT_UNIT = "overlay-agent.service"
ETCD_UNIT = "overlay-etcd.service"
PACKAGED_ETCD_UNIT = "etcd.service"   # Debian's etcd-server, enabled on installation
ETCD_DATA_DIR = "/var/lib/overlay/etcd"
OVS_UNIT = "openvswitch-switch.service"
OVS_RUNDIR = "/var/run/openvswitch"
CNI_BIN = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_VNI, DEFAULT_SUBNET = 42, "10.0.0.0/24"
NO_TLS = TlsFiles()

# --- what gets written (pure) -----------------------------------------------------------------


def etcd_unit(command: Sequence[str]) -> str:
    # Restart covers a boot where etcd starts before the private address is configured.
    return systemd_unit("etcd for the overlay lab", command, after=["network-online.target"],
                        conflicts=[PACKAGED_ETCD_UNIT], notify=True)


def agent_settings(name: str, etcd: str, underlay_interface: str,
                   underlay_ip: str = "", tls: TlsFiles = NO_TLS) -> dict[str, Any]:
    """The agent's configuration on a VM: the system's OVS, and the kernel datapath."""
    values: dict[str, Any] = {
        "host": name, "underlay_interface": underlay_interface,
        "etcd_endpoints": [e.strip() for e in etcd.split(",") if e.strip()],
        "ovsdb": f"unix:{OVS_RUNDIR}/db.sock", "ovs_rundir": OVS_RUNDIR,
        "socket": AGENT_SOCKET, "datapath": "system",
        # The host record's lease outlives an agent restart under qemu TCG (15-18 s, Python
        # start-up alone): running peers keep their flows for host_grace anyway, but a peer
        # agent that itself restarts while this record is gone cannot learn its VTEP until it
        # is back (see docs/vagrant-lab.md).
        "lease_ttl": 30}
    if underlay_ip:
        values["underlay_ip"] = underlay_ip
    if tls.enabled:
        values.update(etcd_ca=tls.ca, etcd_cert=tls.cert, etcd_key=tls.key)
    return values


# --- what gets read (pure) --------------------------------------------------------------------


def ipv4_addresses(ip_oneline: str) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, address) pairs from `ip -o -4 addr show`."""
    found = []
    for line in ip_oneline.splitlines():
        fields = line.split()
        if "inet" in fields[:4] and len(fields) > fields.index("inet") + 1:
            ifname = fields[1].split("@")[0]
            found.append((ifname, ipaddress.IPv4Interface(fields[fields.index("inet") + 1])))
    return found


def interface_with_address(ip_oneline: str, ip: str) -> str:
    wanted = ipaddress.IPv4Address(ip.split("/")[0])
    for ifname, address in ipv4_addresses(ip_oneline):
        if address.ip == wanted:
            return ifname
    raise RuntimeError(f"no interface has the address {wanted}")


def find_endpoint(records: Sequence[dict[str, Any]], container: str) -> dict[str, Any] | None:
    for rec in records:
        if rec.get("container_id") == container:
            return rec
    return None


def retire_packaged_etcd() -> None:
    # It listens on 127.0.0.1:2379: on the etcd VM it would hold overlay-etcd's port, elsewhere
    # it would answer `overlayctl` (whose default is 127.0.0.1) with an empty store.
    # Skipped when already done (the overlay box ships it disabled): `disable` on a unit with a
    # SysV script runs update-rc.d and two daemon-reloads, minutes under TCG.
    enabled, active = unit_state(PACKAGED_ETCD_UNIT)
    if enabled not in ("disabled", "masked", "") or active not in ("inactive", "unknown"):
        systemctl("disable", "--now", PACKAGED_ETCD_UNIT, check=False)


# --- commands ---------------------------------------------------------------------------------


def cmd_etcd(args: argparse.Namespace) -> int:
    server = None
    if args.tls:
        vm_tls.install()
        d = vm_tls.PKI_DIR
        server = steps.EtcdServerTls(f"{d}/etcd.crt", f"{d}/etcd.key", f"{d}/ca.crt")
    command = steps.etcd_command(args.name or socket.gethostname(), ETCD_DATA_DIR, args.listen,
                                 tls=server)
    command[0] = shutil.which(command[0]) or command[0]
    retire_packaged_etcd()
    os.makedirs(ETCD_DATA_DIR, mode=0o700, exist_ok=True)  # etcd warns about anything wider
    changed = install_unit(ETCD_UNIT, etcd_unit(command))
    enable(ETCD_UNIT)
    systemctl("restart" if changed else "start", ETCD_UNIT)
    scheme = "https" if args.tls else "http"
    url = f"{scheme}://{args.listen}:{steps.ETCD_PORT}"
    as_root = ["etcdctl", "--dial-timeout=10s", "--command-timeout=60s", "--endpoints", url,
               *vm_tls.etcdctl_args(vm_tls.root_tls() if args.tls else NO_TLS)]
    try:
        steps.wait_for(lambda: run([*as_root, "endpoint", "health"], check=False).returncode == 0,
                       f"etcd at {url}", timeout=300)
    except RuntimeError as err:
        raise RuntimeError(f"{err}\n{journal_tail(ETCD_UNIT)}") from None
    if args.tls:
        def etcdctl(a: Sequence[str]) -> subprocess.CompletedProcess[str]:
            return run([*as_root, *a], check=False, timeout=120)
        etcdauth.enable(etcdctl, args.host)
    print(f"etcd: {ETCD_UNIT} serving {url} and {scheme}://127.0.0.1:{steps.ETCD_PORT}"
          + (f"; users {', '.join(args.host)} (role {etcdauth.HOST_ROLE})" if args.tls else ""))
    return 0


def start_system_ovs() -> None:
    run(["modprobe", "openvswitch"])  # the kernel datapath; fail here rather than in the agent
    enable(OVS_UNIT)
    systemctl("start", OVS_UNIT)
    steps.wait_for(lambda: os.path.exists(f"{OVS_RUNDIR}/db.sock"), "ovsdb-server socket")


def start_agent_unit(timeout: float) -> None:
    # The unit is the shipped one (overlay/install/), put in place by install() in cmd_host.
    # Restarted whether or not the unit changed: the configuration may have.
    systemctl("stop", AGENT_UNIT, check=False)
    if os.path.exists(AGENT_SOCKET):  # so that its appearance means the new agent is serving
        os.unlink(AGENT_SOCKET)
    enable(AGENT_UNIT)
    systemctl("start", AGENT_UNIT)
    try:
        steps.wait_for(lambda: os.path.exists(AGENT_SOCKET), f"overlay-agent socket {AGENT_SOCKET}",
                       timeout=timeout)
    except RuntimeError as err:
        raise RuntimeError(f"{err} (it serves once etcd answers)\n{journal_tail(AGENT_UNIT)}") from None


T = TypeVar("T")


def when_etcd_answers(call: Callable[[], T], etcd: str, deadline: float) -> T:
    # Under `vagrant up`'s parallel provisioning etcd may be busy (or on a TCG VM, slower than
    # overlayctl's timeout) while node1 provisions itself: "try again later" is retried.
    while True:
        try:
            return call()
        except CniError as err:
            if err.code != Code.TRY_AGAIN_LATER or time.monotonic() > deadline:
                raise
            print(f"waiting for etcd at {etcd}: {err}", file=sys.stderr)
            time.sleep(2)


def create_network_when_etcd_answers(args: argparse.Namespace, tls: TlsFiles,
                                     deadline: float) -> None:
    when_etcd_answers(lambda: overlayctl.create_network(args.etcd, args.network, args.vni,
                                                        args.subnet, tls=tls), args.etcd, deadline)


def etcd_tls(etcd: str) -> TlsFiles:
    """The lab's client certificate for https endpoints, nothing for http ones."""
    return vm_tls.client_tls() if "https://" in etcd else NO_TLS


def cmd_host(args: argparse.Namespace) -> int:
    name = args.name or socket.gethostname()
    retire_packaged_etcd()
    start_system_ovs()
    # What an operator runs on a real host: the plugin, the unit, an example config (replaced
    # by this lab's own just below).
    report = installer.install("/")
    interface = args.underlay_interface or interface_with_address(
        run(["ip", "-o", "-4", "addr", "show"]).stdout, args.underlay_ip)
    os.makedirs(os.path.dirname(AGENT_CONFIG), exist_ok=True)
    vm_tls.install()  # this VM's own certificate, if Vagrant uploaded it
    tls = etcd_tls(args.etcd)
    steps.write_agent_config(AGENT_CONFIG, **agent_settings(name, args.etcd, interface,
                                                            args.underlay_ip or "", tls))
    cfg = agent_config.load(["--config", AGENT_CONFIG])
    start_agent_unit(args.timeout)

    create_network_when_etcd_answers(args, tls, time.monotonic() + args.timeout)
    os.makedirs(CNI_CONF_DIR, exist_ok=True)
    conflist = os.path.join(CNI_CONF_DIR, ctr.conflist_name(args.network))
    steps.write_cni_config(conflist, network=args.network, vni=args.vni, subnet=args.subnet,
                           bridge=cfg.bridge, agent_socket=cfg.socket)
    plugin = os.path.join("/", installer.PLUGIN_PATH)
    info = overlayctl.status(cfg.socket)
    print(f"{name}: agent {info['host']} serving on {cfg.socket}, vtep {info['vtep']} "
          f"({interface}), datapath {info['datapath']}, etcd {args.etcd}")
    print(f"{name}: network {args.network} (VNI {args.vni}, {args.subnet}) in {conflist}, "
          f"plugin {plugin}; installed: {', '.join(report.changed) or 'nothing new'}")
    return 0


def read_conflist(network: str) -> dict[str, Any]:
    with open(os.path.join(CNI_CONF_DIR, ctr.conflist_name(network))) as fh:
        return dict(json.load(fh))


def cmd_container(args: argparse.Namespace) -> int:
    netconf = ctr.plugin_netconf(read_conflist(args.network))

    def cni(command: str) -> ctr.CniOutcome:
        return ctr.cni_exec(CNI_BIN, command, container_id=args.name,
                            netns=f"/var/run/netns/{args.name}", ifname=args.ifname, netconf=netconf)

    host = socket.gethostname()
    if netns_exists(args.name) and cni("CHECK").returncode == 0:
        shown = run(["ip", "-o", "-4", "addr", "show", "dev", args.ifname], netns=args.name).stdout
        addresses = ", ".join(str(a) for _, a in ipv4_addresses(shown))
        print(f"{args.name} on {host}: {addresses} (already attached, netns {args.name})")
        return 0
    # Gone with a reboot or half made: undo whatever is left, as a runtime would, then attach.
    removed = cni("DEL")
    del_netns(args.name)
    add_netns(args.name)
    outcome = cni("ADD")
    if outcome.returncode != 0:
        del_netns(args.name)
        before = "" if removed.returncode == 0 else f" (DEL before it failed too: {removed.stdout.strip()})"
        raise RuntimeError(f"ADD {args.name} failed: {outcome.stdout.strip()} {outcome.stderr.strip()}"
                           + before)
    print(f"{args.name} on {host}: {outcome.json()['ips'][0]['address']} (netns {args.name})")
    return 0


def resolve(target: str, etcd: str, timeout: float) -> tuple[str, str]:
    """The address to ping, and how to show it: `target` itself, or a container's endpoint."""
    try:
        return str(ipaddress.ip_address(target)), target
    except ValueError:
        pass
    deadline = time.monotonic() + timeout
    # It may be attached on a VM that is still being provisioned.
    while (rec := find_endpoint(when_etcd_answers(
            lambda: overlayctl.endpoints(etcd, tls=etcd_tls(etcd)), etcd, deadline), target)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no container {target} recorded in etcd at {etcd}")
        time.sleep(1)
    address = rec["ips"][0].split("/")[0]
    return address, f"{target} {address} ({rec['host']})"


CONVERGE_WITHIN = 30.0  # seconds


def cmd_ping(args: argparse.Namespace) -> int:
    etcd = args.etcd or ",".join(agent_config.load(["--config", AGENT_CONFIG]).etcd_endpoints)
    address, shown = resolve(args.target, etcd, args.timeout)
    # The record is in etcd; the local agent learns it through its watch a moment later (under
    # TCG, seconds). Like the netns lab's wait for convergence: ping again until that moment
    # has surely passed, then report the last outcome. A partial answer counts as not yet: a
    # run whose first request left before the flows were in lost that one (seen: 2 of 3).
    deadline = time.monotonic() + CONVERGE_WITHIN
    tries = 1
    while not (outcome := ctr.ping(args.name, address, args.count)).complete and \
            time.monotonic() < deadline:
        tries += 1
        time.sleep(1)
    verdict = "OK" if outcome.complete else ("PARTIAL" if outcome.ok else "FAILED")
    print(f"  {args.name} ({socket.gethostname()}) -> {shown}: {verdict}  {outcome.summary}"
          + (f"  (ping run {tries}; the earlier runs were incomplete)" if tries > 1 else ""))
    return 0 if outcome.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m overlay.lab.vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("etcd", help="run etcd as a systemd unit")
    e.add_argument("--listen", required=True, help="the address other hosts reach etcd on")
    e.add_argument("--name", help="member name (default: the hostname)")
    e.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                   help=f"https, client certificates (uploaded to {vm_tls.UPLOAD_DIR}) and an "
                        "etcd user per --host")
    e.add_argument("--host", action="append", default=[], help="a host to make an etcd user for")
    e.set_defaults(func=cmd_etcd)

    h = sub.add_parser("host", help="make this machine an overlay host")
    h.add_argument("--name", help="host name in etcd (default: the hostname)")
    h.add_argument("--etcd", required=True, help="etcd endpoint(s), comma-separated")
    where = h.add_mutually_exclusive_group(required=True)
    where.add_argument("--underlay-ip", help="the VTEP address; its interface is the underlay")
    where.add_argument("--underlay-interface", help="the underlay NIC; its first IPv4 is the VTEP")
    h.add_argument("--network", default=ctr.DEFAULT_NETWORK)
    h.add_argument("--vni", type=int, default=DEFAULT_VNI)
    h.add_argument("--subnet", default=DEFAULT_SUBNET)
    # Generous: under TCG on a busy machine the agent's interpreter start alone took 103 s, and
    # its first bridge creation can time out and be retried by systemd.
    h.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the agent, which waits for etcd")
    h.set_defaults(func=cmd_host)

    c = sub.add_parser("container", help="a namespace attached through the CNI plugin")
    c.add_argument("name", help="namespace name and CNI container ID")
    c.add_argument("--network", default=ctr.DEFAULT_NETWORK)
    c.add_argument("--ifname", default="eth0")
    c.set_defaults(func=cmd_container)

    p = sub.add_parser("ping", help="ping from a container")
    p.add_argument("name", help="the container to ping from")
    p.add_argument("target", help="an IP address, or a container on any host")
    p.add_argument("--etcd", help=f"where containers are recorded (default: from {AGENT_CONFIG})")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the target container to appear in etcd")
    p.set_defaults(func=cmd_ping)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("python -m overlay.lab.vm needs root (systemd units, OVS, namespaces)")
    try:
        result: int = args.func(args)
    except (RuntimeError, CniError) as err:
        print(f"overlay.lab.vm {args.cmd}: {err}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
