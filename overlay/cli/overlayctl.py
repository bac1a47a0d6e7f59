"""overlayctl: look at the overlay's control plane (etcd) and at a host's agent.

    overlayctl [--etcd URL] hosts | networks | endpoints [--json]
    overlayctl [--etcd URL] network-create NAME --vni VNI --subnet CIDR
    overlayctl status [--socket PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from overlay.cni.errors import CniError
from overlay.store import records as r

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_SOCKET = "/run/overlay/agent.sock"


def _cell(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [{c: _cell(row.get(c, "")) for c in columns} for row in rows]
    widths = {c: max([len(c)] + [len(cell[c]) for cell in cells]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    for cell in cells:
        lines.append("  ".join(cell[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def _load(etcd: str, prefix: str) -> dict[str, bytes]:
    from overlay.store.etcd import Store  # deferred: `status` needs no etcd client

    store = Store(endpoints=[e.strip() for e in etcd.split(",")])
    try:
        return store.snapshot(prefix)[1]
    finally:
        store.close()


def hosts(etcd: str) -> list[dict[str, Any]]:
    """Live hosts (their leased key exists) and hosts that only endpoints still name."""
    state = _load(etcd, r.ROOT)
    rows = {rec.host: dict(rec.__dict__, alive=True)
            for rec in (r.HostRecord.from_json(v) for k, v in state.items()
                        if k.startswith(r.HOSTS))}
    for key, value in state.items():
        if key.startswith(r.ENDPOINTS):
            name = r.EndpointRecord.from_json(value).host
            rows.setdefault(name, {"host": name, "vtep": "?", "datapath": "?", "alive": False})
    return [rows[name] for name in sorted(rows)]


def networks(etcd: str) -> list[dict[str, Any]]:
    return [dict(r.NetworkRecord.from_json(v).__dict__)
            for _, v in sorted(_load(etcd, r.NETWORKS).items())]


def endpoints(etcd: str) -> list[dict[str, Any]]:
    return [dict(r.EndpointRecord.from_json(v).__dict__)
            for _, v in sorted(_load(etcd, r.ENDPOINTS).items())]


def create_network(etcd: str, name: str, vni: int, subnet: str) -> None:
    """Same validation as a netconf's, then the same idempotent record ADD would write."""
    from overlay.cni.netconf import parse_netconf
    from overlay.store.etcd import Store

    conf = parse_netconf(json.dumps({"cniVersion": "1.0.0", "name": name, "type": "ovs",
                                     "vxlanID": vni, "ipam": {"subnet": subnet}}).encode())
    store = Store(endpoints=[e.strip() for e in etcd.split(",")])
    try:
        store.ensure_network(r.NetworkRecord(conf.name, conf.vni, str(conf.subnet)))
    finally:
        store.close()


def status(socket_path: str) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from overlay.cni.v1 import cni_pb2, cni_pb2_grpc

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        reply = cni_pb2_grpc.CniStub(channel).AgentInfo(cni_pb2.AgentInfoRequest(), timeout=5)
    info: dict[str, Any] = MessageToDict(reply, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    return info


COLUMNS = {
    "hosts": ("host", "vtep", "datapath", "alive"),
    "networks": ("name", "vni", "subnet"),
    "endpoints": ("network", "container_id", "ifname", "host", "ips", "mac", "port"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overlayctl", description=__doc__.split("\n")[1])
    parser.add_argument("--etcd", default=DEFAULT_ETCD, help="etcd endpoint(s), comma-separated")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="what", required=True)
    for name in COLUMNS:
        sub.add_parser(name, help=f"list {name} recorded in etcd")
    nc = sub.add_parser("network-create", help="record a network and claim its VNI")
    nc.add_argument("name")
    nc.add_argument("--vni", type=int, required=True)
    nc.add_argument("--subnet", required=True)
    st = sub.add_parser("status", help="ask a host's agent how it is doing")
    st.add_argument("--socket", default=DEFAULT_SOCKET)
    args = parser.parse_args(argv)
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
        if args.what == "network-create":
            create_network(args.etcd, args.name, args.vni, args.subnet)
            print(f"network {args.name}: VNI {args.vni}, subnet {args.subnet}")
            return 0
        rows = {"hosts": hosts, "networks": networks, "endpoints": endpoints}[args.what](args.etcd)
    except CniError as err:
        print(f"overlayctl: {err}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else table(rows, COLUMNS[args.what]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
