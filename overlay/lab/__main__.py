"""python -m overlay.lab: bring the netns lab up or down, add containers, show the ping.

    up [--hosts N] [--tls|--no-tls]      hosts, etcd, network my-net (VNI 42, 10.0.0.0/24);
       [--bridge BR] [--no-network]      etcd over https with a client certificate, an etcd user
                                         and a role per host (the default); --no-tls (or TLS=0):
                                         plain http, open to whoever reaches etcd's port;
                                         --bridge: the agents' bridge; --no-network: no my-net
    demo                                 containers c0 on host0 and c1 on host1, ping both ways
    container add NAME --host H [--network N | --netconf FILE] [--label K=V ...]
    container del NAME
    network add NAME --vni V --subnet S
    dhcp-server NAME --host H --network N --vni V --address CIDR --range FIRST,LAST
                                         a container running dnsmasq (docs/cni-reference.md)
    ping A B                             from container A to container B's address
    trace A B|IP [--proto P] [--dport N] [--src-ip IP] [--json]
                                         overlayctl trace across every host on the way
    metrics HOST [--path /readyz]        the agent's /metrics (or probe) from its namespace
    status | down
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable

from overlay.lab import containers as ctr
from overlay.lab import dhcp, dockerd, etcdauth
from overlay.lab.topology import Lab

WORKDIR = os.environ.get("OVERLAY_LAB_DIR", "/run/overlay-lab")


def _ping(lab: Lab, src: str, dst: str, count: int = 3) -> bool:
    target = lab.containers[dst]["ip"]
    outcome = ctr.ping(lab.containers[src]["netns"], target, count)
    print(f"  {src} ({lab.containers[src]['host']}) -> {dst} {target} "
          f"({lab.containers[dst]['host']}): {'OK' if outcome.ok else 'FAILED'}  {outcome.summary}")
    return outcome.ok


def _add(lab: Lab, name: str, host: str, network: str,
         labels: dict[str, str] | None = None) -> None:
    out = ctr.add_container(lab, name, host, network, labels=labels)
    if out.returncode != 0:
        raise SystemExit(f"ADD {name} on {host} failed: {out.stdout.strip()} {out.stderr.strip()}")
    print(f"  {name} on {host}: {lab.containers[name]['ip']} (netns {lab.containers[name]['netns']})")


def _dhcp_server(lab: Lab, args: argparse.Namespace) -> int:
    server_ip = ipaddress.ip_interface(args.address)
    first, last = args.range.split(",")
    conf = {"cniVersion": "0.3.1", "name": args.network, "type": "ovs", "bridge": lab.bridge,
            "vxlanID": args.vni, "ipam": {"type": "static", "addresses": [{"address": args.address}]},
            # Only the addresses the network names may answer DHCP clients (overlay flows).
            "dhcpServers": [str(server_ip.ip)]}
    out = ctr.add_container(lab, args.name, args.host, netconf=conf)
    if out.returncode != 0:
        print(out.stdout.strip() or out.stderr.strip())
        return out.returncode
    server = dhcp.start_server(lab.workdir, args.name, lab.containers[args.name]["netns"],
                               first=first, last=last, netmask=str(server_ip.netmask),
                               router=str(server_ip.ip))
    print(f"{args.name} on {args.host}: dnsmasq on {server_ip}, leases {first}-{last} "
          f"(router {server_ip.ip}); lease file {server.leasefile}, log {server.log}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m overlay.lab")
    parser.add_argument("--workdir", default=WORKDIR)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--hosts", type=int, default=int(os.environ.get("HOSTS", "2")))
    up.add_argument("--tls", action=argparse.BooleanOptionalAction,
                    default={"0": False, "1": True}.get(os.environ.get("TLS", "")),
                    help="etcd serves https only, requires client certificates (made with "
                         "openssl) and limits each host's etcd user to /overlay/v1/ (default: "
                         "on, or what the lab already runs; TLS=0 or --no-tls: plain http)")
    up.add_argument("--bridge", default="br-int", help="the bridge every host's agent manages")
    up.add_argument("--prefix", default="ovl",
                    help="of every namespace and link the lab makes (another lab beside this one)")
    up.add_argument("--no-network", action="store_true",
                    help="do not define my-net (VNI 42, 10.0.0.0/24), e.g. to give VNI 42 to pci")
    sub.add_parser("demo")
    sub.add_parser("down")
    sub.add_parser("status")
    c = sub.add_parser("container")
    c.add_argument("action", choices=["add", "del"])
    c.add_argument("name")
    c.add_argument("--host", default="host0")
    c.add_argument("--network", default=ctr.DEFAULT_NETWORK)
    c.add_argument("--netconf", help="a netconf file to use as it is (e.g. without agentSocket: "
                                     "the plugin runs with the host's /run/overlay)")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label for network policies (repeatable), sent in args.cni.labels")
    d = sub.add_parser("dhcp-server", help="a container running dnsmasq, attached with static "
                                           "IPAM and named in its netconf's dhcpServers")
    d.add_argument("name")
    d.add_argument("--host", default="host0")
    d.add_argument("--network", required=True)
    d.add_argument("--vni", type=int, required=True)
    d.add_argument("--address", required=True, help="the server's own address, e.g. 10.9.0.2/24")
    d.add_argument("--range", required=True, help="FIRST,LAST addresses to lease")
    n = sub.add_parser("network")
    n.add_argument("action", choices=["add"])
    n.add_argument("name")
    n.add_argument("--vni", type=int, required=True)
    n.add_argument("--subnet", required=True)
    p = sub.add_parser("ping")
    p.add_argument("src")
    p.add_argument("dst")
    t = sub.add_parser("trace")
    t.add_argument("src")
    t.add_argument("dst", help="a lab container or an IP address")
    t.add_argument("--proto", default="icmp", choices=("icmp", "tcp", "udp", "arp"))
    t.add_argument("--dport", type=int, default=0)
    t.add_argument("--src-ip", default="", help="forge the source address")
    t.add_argument("--json", action="store_true")
    k = sub.add_parser("docker", help="a dockerd per host (docs/docker.md): up, down, or HOST "
                                      "ARGS... to run the docker client against HOST's daemon")
    k.add_argument("what", help="up, down, or a host's name")
    k.add_argument("args", nargs=argparse.REMAINDER)
    m = sub.add_parser("metrics")
    m.add_argument("host")
    m.add_argument("--path", default="/metrics")
    return parser


def _up(args: argparse.Namespace) -> int:
    lab = Lab.load(args.workdir) if os.path.exists(f"{args.workdir}/lab.json") else Lab(
        workdir=args.workdir, tls=args.tls is not False, bridge=args.bridge, prefix=args.prefix)
    if args.tls is not None and args.tls != lab.tls:  # unsaid, the lab stays as it is
        raise SystemExit(f"the lab in {args.workdir} runs etcd {'with' if lab.tls else 'without'}"
                         f" TLS; remove it first (make lab-down) to bring it up "
                         f"{'with' if args.tls else 'without'} TLS")
    print(f"bringing up {args.hosts} hosts in {args.workdir} ...")
    lab.up(args.hosts, progress=lambda line: print(line, flush=True))
    if not args.no_network:
        ctr.define_network(lab, ctr.DEFAULT_NETWORK, 42, "10.0.0.0/24")
    if lab.tls:
        print(f"  etcd: {lab.etcd_url}, client certificates required, one etcd user per host "
              f"(role {etcdauth.HOST_ROLE}: {etcdauth.PREFIX} only); certificates in "
              f"{lab.pki_dir}")
    else:
        print(f"  etcd: {lab.etcd_url}, plain http without authentication (TLS=0)")
    for h in lab.hosts:
        print(f"  {h.name}: netns {h.netns}, vtep {h.vtep}, agent socket {h.socket}")
    return 0


def _down(lab: Lab, args: argparse.Namespace) -> int:
    dockerd.down(lab)
    lab.down()
    print("lab removed")
    return 0


def _demo(lab: Lab, args: argparse.Namespace) -> int:
    for name, host in (("c0", lab.hosts[0].name), ("c1", lab.hosts[1].name)):
        if name not in lab.containers:
            _add(lab, name, host, ctr.DEFAULT_NETWORK)
    print("waiting for every agent to learn every container ...", flush=True)
    ctr.wait_converged(lab)
    print("cross-host ping over VXLAN (VNI 42):")
    ok = _ping(lab, "c0", "c1") & _ping(lab, "c1", "c0")
    return 0 if ok else 1


def _labels(items: list[str]) -> dict[str, str]:
    """--label KEY=VALUE ... as a dict; the agent checks keys and values (the CNI error says)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--label {item!r}: expected KEY=VALUE, e.g. --label app=web")
        out[key] = value
    return out


def _container(lab: Lab, args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    if args.action == "add" and args.netconf:
        with open(args.netconf) as fh:
            out = ctr.add_container(lab, args.name, args.host, netconf=json.load(fh),
                                    labels=labels)
        print(out.stdout.strip() or out.stderr.strip())
        return out.returncode
    if args.action == "add":
        _add(lab, args.name, args.host, args.network, labels)
        return 0
    out = ctr.del_container(lab, args.name)
    print(out.stdout or "deleted")
    return out.returncode


def _network(lab: Lab, args: argparse.Namespace) -> int:
    ctr.define_network(lab, args.name, args.vni, args.subnet)
    return 0


def _ping_command(lab: Lab, args: argparse.Namespace) -> int:
    return 0 if _ping(lab, args.src, args.dst) else 1


def _trace(lab: Lab, args: argparse.Namespace) -> int:
    from overlay.lab.trace import lab_trace, render

    options = ["--proto", args.proto] + (["--dport", str(args.dport)] if args.dport else [])
    options += ["--src-ip", args.src_ip] if args.src_ip else []
    result = lab_trace(lab, args.src, args.dst, options)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _docker(lab: Lab, args: argparse.Namespace) -> int:
    if args.what in ("up", "down"):
        (dockerd.up if args.what == "up" else dockerd.down)(lab)
        print(f"docker {args.what}: " + ", ".join(
            f"{h.name} {dockerd.api_socket(h)}" for h in lab.hosts))
        return 0
    cmd = dockerd.client(lab.host(args.what), *args.args)
    return subprocess.run(cmd, env={**os.environ, "DOCKER_API_VERSION": "1.41"}).returncode


def _metrics(lab: Lab, args: argparse.Namespace) -> int:
    status, body = lab.agent_http(lab.host(args.host), args.path)
    print(body, end="")
    return 0 if status == 200 else 1


def _status(lab: Lab, args: argparse.Namespace) -> int:
    print(f"etcd: {lab.etcd_url}" + (f" (TLS, client certificates in {lab.pki_dir})"
                                     if lab.tls else ""))
    for h in lab.hosts:
        print(f"{h.name}: netns {h.netns}, vtep {h.vtep}, socket {h.socket}, "
              f"cni config {h.cni_dir}")
    for name, cinfo in lab.containers.items():
        print(f"{name}: {cinfo}")
    return 0


# The commands that need a lab already up (`up` makes one), by name.
COMMANDS: dict[str, Callable[[Lab, argparse.Namespace], int]] = {
    "down": _down, "demo": _demo, "container": _container, "dhcp-server": _dhcp_server,
    "network": _network, "ping": _ping_command, "trace": _trace, "metrics": _metrics,
    "docker": _docker,
    "status": _status,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "up":
        return _up(args)
    if not os.path.exists(f"{args.workdir}/lab.json"):
        if args.cmd == "down":
            return 0
        raise SystemExit(f"no lab in {args.workdir}: run `make lab` first")
    return COMMANDS[args.cmd](Lab.load(args.workdir), args)


if __name__ == "__main__":
    sys.exit(main())
