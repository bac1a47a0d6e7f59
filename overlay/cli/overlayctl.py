"""overlayctl: look at the overlay's control plane (etcd) and at a host's agent.

    overlayctl [--etcd URL] [TLS] hosts | networks | endpoints [--json]
    overlayctl [--etcd URL] [TLS] hosts rotate-key HOST
    overlayctl [--etcd URL] [TLS] network-create NAME --vni VNI --subnet CIDR [--encrypted]
    overlayctl [--etcd URL] [TLS] doctor [--socket PATH ...]
    overlayctl status [--socket PATH] [--json]
    overlayctl [--etcd URL] [TLS] trace SRC DST [--proto icmp|tcp|udp|arp] [--dport N]
               [--arriving] [--json]
    overlayctl [--etcd URL] [TLS] policy apply -f FILE [--network N] | delete NAME [--network N]
               | list [--network N] | show NAME [--network N]   (overlay/cli/policy.py)

TLS: --etcd-ca FILE [--etcd-cert FILE --etcd-key FILE], as the agent's etcd_ca/etcd_cert/etcd_key;
the default --etcd is then https://127.0.0.1:2379. `--json` goes before or after the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from overlay.cli import policy, wireguard
from overlay.cli.trace import TraceError
from overlay.errors import CniError, Code
from overlay.store import records as r
from overlay.store.tls import TlsError, TlsFiles

if TYPE_CHECKING:
    from overlay.store.etcd import Store

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_ETCD_TLS = "https://127.0.0.1:2379"
NO_TLS = TlsFiles()
DEFAULT_SOCKET = "/run/overlay/agent.sock"


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # labels: app=web,tier=front
        return ",".join(f"{k}={v}" for k, v in value.items())
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [{c: _cell(row.get(c, "")) for c in columns} for row in rows]
    widths = {c: max([len(c)] + [len(cell[c]) for cell in cells]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    for cell in cells:
        lines.append("  ".join(cell[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def _store(etcd: str, tls: TlsFiles) -> Store:
    from overlay.store.etcd import Store  # deferred: `status` needs no etcd client

    return Store(endpoints=[e.strip() for e in etcd.split(",")], ca=tls.ca, cert=tls.cert,
                 key=tls.key)


T = TypeVar("T")


# How long a command keeps trying an etcd that does not answer. The agent's ADD must say "try
# again later" at once; a person's one command should not fail on one lost connection attempt
# (the VM tier saw a TLS connection to a busy etcd under emulation fail once while the agents
# were being served). Every use below is a read or an idempotent create: safe to repeat.
PATIENCE = 10.0


def _with_store(etcd: str, tls: TlsFiles, use: Callable[[Store], T],
                patience: float = PATIENCE) -> T:
    """Run `use` with a client; "unreachable" that is really a TLS refusal says so."""
    store = _store(etcd, tls)
    deadline = time.monotonic() + patience
    try:
        while True:
            try:
                return use(store)
            except CniError as err:
                if err.code is not Code.TRY_AGAIN_LATER:
                    raise
                reason = store.tls_rejection()
                if reason is not None:
                    raise CniError(err.code, "etcd refuses our TLS", reason) from None
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
    finally:
        store.close()


def _load(etcd: str, prefix: str, tls: TlsFiles = NO_TLS) -> dict[str, bytes]:
    return _with_store(etcd, tls, lambda store: store.snapshot(prefix)[1])


def hosts(etcd: str, *, tls: TlsFiles = NO_TLS) -> list[dict[str, Any]]:
    """Live hosts (their leased key exists) and hosts that only endpoints still name."""
    state = _load(etcd, r.ROOT, tls)
    rows = {rec.host: dict(rec.__dict__, alive=True)
            for rec in (r.HostRecord.from_json(v) for k, v in state.items()
                        if k.startswith(r.HOSTS))}
    for key, value in state.items():
        if key.startswith(r.ENDPOINTS):
            name = r.EndpointRecord.from_json(value).host
            rows.setdefault(name, {"host": name, "vtep": "?", "datapath": "?", "alive": False})
    wireguard.add_key_columns(list(rows.values()), wireguard.handshakes())
    return [rows[name] for name in sorted(rows)]


def networks(etcd: str, *, tls: TlsFiles = NO_TLS) -> list[dict[str, Any]]:
    return [dict(r.NetworkRecord.from_json(v).__dict__)
            for _, v in sorted(_load(etcd, r.NETWORKS, tls).items())]


def endpoints(etcd: str, *, tls: TlsFiles = NO_TLS) -> list[dict[str, Any]]:
    return [with_pod(dict(r.EndpointRecord.from_json(v).__dict__))
            for _, v in sorted(_load(etcd, r.ENDPOINTS, tls).items())]


def with_pod(row: dict[str, Any]) -> dict[str, Any]:
    """The POD column, "namespace/name" as kubectl names a pod; "" for a container no
    Kubernetes started."""
    if row.get("pod_namespace") or row.get("pod_name"):
        row["pod"] = f"{row.get('pod_namespace', '')}/{row.get('pod_name', '')}"
    else:
        row["pod"] = ""
    return row


def create_network(etcd: str, name: str, vni: int, subnet: str, *,
                   tls: TlsFiles = NO_TLS, encrypted: bool = False) -> None:
    """Same validation as a netconf's, then the same idempotent record ADD would write."""
    from overlay.cni.netconf import parse_netconf

    conf = parse_netconf(json.dumps({"cniVersion": "1.0.0", "name": name, "type": "ovs",
                                     "vxlanID": vni, "ipam": {"subnet": subnet}}).encode())
    _with_store(etcd, tls, lambda store: store.ensure_network(
        r.NetworkRecord(conf.name, conf.vni, conf.subnets_text, encrypted)))


def rotate_key(etcd: str, action: list[str], tls: TlsFiles) -> int:
    if len(action) != 2 or action[0] != "rotate-key":
        print("overlayctl: usage: overlayctl hosts rotate-key HOST", file=sys.stderr)
        return 2
    request = f"{time.time():.6f}"  # a new value: each request is served once

    def put(store: Store) -> None:
        try:
            store.client.put(r.rotation_key(action[1]), request)
        except Exception as exc:  # noqa: BLE001 (pyetcd's own errors): _with_store tries again
            raise CniError(Code.TRY_AGAIN_LATER, "etcd is not reachable; try again later",
                           str(exc)[:200]) from None
    _with_store(etcd, tls, put)
    print(f"asked host {action[1]} for a new WireGuard key pair (request {request}); its "
          "peers follow its host record")
    return 0


def run_doctor(etcd: str, sockets: list[str], tls: TlsFiles) -> list[str]:
    import grpc

    from overlay.cli.doctor import cluster_problems
    from overlay.cni.v1 import cni_pb2, cni_pb2_grpc

    state = _load(etcd, r.ROOT, tls=tls)
    problems = cluster_problems(state) + wireguard.cluster_problems(state)
    for path in sockets:
        try:
            with grpc.insecure_channel(f"unix:{path}") as channel:
                reply = cni_pb2_grpc.CniStub(channel).Doctor(cni_pb2.DoctorRequest(), timeout=30)
        except grpc.RpcError as exc:
            problems.append(f"agent at {path} did not answer: {exc.code()}")
            continue
        problems += [f"{reply.host}: {p}" for p in reply.problems]
    return problems


def status(socket_path: str) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from overlay.cni.v1 import cni_pb2, cni_pb2_grpc

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        reply = cni_pb2_grpc.CniStub(channel).AgentInfo(cni_pb2.AgentInfoRequest(), timeout=5)
    info: dict[str, Any] = MessageToDict(reply, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    return info


def json_flag(command: argparse.ArgumentParser) -> None:
    """`--json` after the command too. SUPPRESS: a command's own default must not overwrite a
    `--json` given before the command (argparse lets a subparser's defaults win)."""
    command.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="machine-readable output")


def add_trace_parser(sub: Any) -> argparse.ArgumentParser:
    tr: argparse.ArgumentParser = sub.add_parser(
        "trace", help="why a packet from container SRC to DST goes where it goes")
    tr.add_argument("src", help="container ID (or NETWORK/ID[/IFNAME]) of the sender")
    tr.add_argument("dst", help="container ID, or an IP address")
    tr.add_argument("--proto", default="icmp", choices=("icmp", "tcp", "udp", "arp"))
    tr.add_argument("--sport", type=int, default=0, help="tcp/udp source port (default 40000)")
    tr.add_argument("--dport", type=int, default=0, help="tcp/udp destination port")
    tr.add_argument("--network", default="", help="SRC's network, when it has several")
    tr.add_argument("--src-ip", default="", help="forge the source address (anti-spoofing)")
    tr.add_argument("--src-mac", default="", help="forge the source MAC (anti-spoofing)")
    tr.add_argument("--arriving", action="store_true",
                    help="trace on the destination host, as the packet leaves the tunnel")
    tr.add_argument("--host", default="", help="with --arriving: this host's name (default: "
                    "the destination's host)")
    tr.add_argument("--ovs-rundir", default=os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"),
                    help="this host's OVS_RUNDIR (default: $OVS_RUNDIR or /var/run/openvswitch)")
    tr.add_argument("--bridge", default="br-int")
    tr.add_argument("--tunnel-port", default="vxlan0")
    return tr


def run_trace(args: Any, etcd: str, tls: TlsFiles) -> int:
    from overlay.cli import trace
    from overlay.cli.trace_egress import Kernel

    cluster = trace.Cluster.from_state(_load(etcd, r.ROOT, tls))
    switch = trace.Switch(args.ovs_rundir, args.bridge, args.tunnel_port)
    # Arriving, the source's port is not on this switch: only etcd can name a next hop.
    neighbour = None if args.arriving else trace.switch_neighbour(switch)
    req = trace.build(cluster, args.src, args.dst, proto=args.proto, sport=args.sport,
                      dport=args.dport, network=args.network, src_ip=args.src_ip,
                      src_mac=args.src_mac, neighbour=neighbour)
    host = args.host or (req.dst.host if args.arriving and req.dst else "")
    result = trace.Trace(req, [trace.trace_hop(req, cluster, switch, arriving=args.arriving,
                                               host=host, kernel=Kernel())])
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(result.render())
    hop = result.hops[-1]
    if hop.continue_on:
        again = [a for a in (argv_of(args)) if a]
        print(f"  continue on {hop.continue_on}: overlayctl trace {' '.join(again)} --arriving")
    return 0


def argv_of(args: Any) -> list[str]:
    """SRC DST and the packet options, to repeat on the next host."""
    out = [args.src, args.dst, "--proto", args.proto]
    for flag, value in (("--sport", args.sport), ("--dport", args.dport),
                        ("--network", args.network), ("--src-ip", args.src_ip),
                        ("--src-mac", args.src_mac)):
        if value:
            out += [flag, str(value)]
    return out


COLUMNS = {
    "hosts": ("host", "vtep", "datapath", "alive", "key", "handshake"),
    "networks": ("name", "vni", "subnet"),
    "endpoints": ("network", "container_id", "ifname", "host", "ips", "mac", "port", "pod",
                  "labels"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlayctl", description=__doc__.split("\n")[1])
    parser.add_argument("--etcd", default=None,
                        help=f"etcd endpoint(s), comma-separated (default: {DEFAULT_ETCD}, or "
                             f"{DEFAULT_ETCD_TLS} with --etcd-ca)")
    parser.add_argument("--etcd-ca", default="", help="CA certificate that signed etcd's")
    parser.add_argument("--etcd-cert", default="", help="client certificate (etcd --client-cert-auth)")
    parser.add_argument("--etcd-key", default="", help="the client certificate's private key")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="what", required=True)
    for name in COLUMNS:
        json_flag(sub.add_parser(name, help=f"list {name} recorded in etcd"))
    sub.choices["hosts"].add_argument("action", nargs="*", metavar="rotate-key HOST",
                                      help="ask HOST's agent for a new WireGuard key pair")
    nc = sub.add_parser("network-create", help="record a network and claim its VNI")
    nc.add_argument("name")
    nc.add_argument("--vni", type=int, required=True)
    nc.add_argument("--subnet", required=True)
    nc.add_argument("--encrypted", action="store_true", help="its VXLAN only inside WireGuard")
    st = sub.add_parser("status", help="ask a host's agent how it is doing")
    st.add_argument("--socket", default=DEFAULT_SOCKET)
    json_flag(st)
    dr = sub.add_parser("doctor", help="check that etcd, OVS and the kernel agree (exit 1 if not)")
    dr.add_argument("--socket", action="append", default=[],
                    help="an agent to check its host too (repeat for several hosts)")
    json_flag(add_trace_parser(sub))
    policy.add_parser(sub, json_flag)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tls = TlsFiles(args.etcd_ca, args.etcd_cert, args.etcd_key)
    etcd = args.etcd or (DEFAULT_ETCD_TLS if tls.enabled else DEFAULT_ETCD)
    try:
        if args.what == "status":
            try:
                info = status(args.socket)
            except Exception as exc:
                print(f"overlayctl: agent at {args.socket} did not answer: {exc}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print("\n".join(f"{k}: {v}" for k, v in info.items()))
            return 0
        if args.what == "doctor":
            problems = run_doctor(etcd, args.socket, tls)
            print("\n".join(problems) if problems else "no problems found")
            return 1 if problems else 0
        if args.what == "trace":
            return run_trace(args, etcd, tls)
        if args.what == "policy":
            def use_store(use: Callable[[Store], T]) -> T:
                return _with_store(etcd, tls, use)
            return policy.run(args, use_store)
        if args.what == "network-create":
            create_network(etcd, args.name, args.vni, args.subnet, tls=tls,
                           encrypted=args.encrypted)
            print(f"network {args.name}: VNI {args.vni}, subnet {args.subnet}"
                  + (", encrypted" if args.encrypted else ""))
            return 0
        if args.what == "hosts" and args.action:
            return rotate_key(etcd, args.action, tls)
        rows = {"hosts": hosts, "networks": networks, "endpoints": endpoints}[args.what](etcd, tls=tls)
    except (CniError, TlsError, TraceError) as err:
        print(f"overlayctl: {err}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else table(rows, COLUMNS[args.what]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
