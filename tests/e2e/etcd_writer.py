"""Writes simulated hosts and endpoints into a lab's etcd the way agents write them.

Run inside the lab's underlay namespace (where etcd listens), one step per invocation:

    etcd_writer.py URL hosts FIRST COUNT            leased host records; prints the lease id
    etcd_writer.py URL puts FIRST COUNT             one endpoint per put
    etcd_writer.py URL txn FIRST COUNT              COUNT endpoints in one transaction
    etcd_writer.py URL burst-compact FIRST COUNT    puts, then compaction at the last revision
    etcd_writer.py URL del-prefix PREFIX            one DeleteRange
    etcd_writer.py URL revoke LEASE                 revoke a lease (its host records vanish)
    etcd_writer.py URL expected ME                  JSON: what host ME's switch should hold

Endpoint i lives on simulated host i // 10, in network `bulk` (VNI 4343). In a TLS lab the
environment names the client certificate: ETCD_CA, ETCD_CERT, ETCD_KEY (etcd's root user's, as
compaction is an admin's call).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

from overlay.store import records as r
from overlay.store.etcd import Store

NETWORK, VNI, PER_HOST = "bulk", 4343, 10


def address(i: int) -> str:
    return str(ipaddress.IPv4Address("10.200.0.0") + 10 + i)


def mac(i: int) -> str:
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address(i)).packed)


def endpoint(i: int) -> tuple[str, str]:
    rec = r.EndpointRecord(network=NETWORK, container_id=f"sim-{i:05d}", ifname="eth0",
                           host=f"sim{i // PER_HOST:04d}", vni=VNI, ips=[f"{address(i)}/16"],
                           mac=mac(i), port=f"ovlsim{i:05d}", netns="/var/run/netns/sim")
    return rec.key, rec.to_json()


def main() -> None:
    url, step, *args = sys.argv[1:]
    store = Store(endpoints=[url], timeout=10.0, ca=os.environ.get("ETCD_CA"),
                  cert=os.environ.get("ETCD_CERT"), key=os.environ.get("ETCD_KEY"))
    client = store.client
    try:
        if step == "hosts":
            first, count = int(args[0]), int(args[1])
            lease = client.lease(600)
            for h in range(first, first + count):
                rec = r.HostRecord(f"sim{h:04d}", str(ipaddress.IPv4Address("172.31.0.100") + h),
                                   "system")
                client.put(r.host_key(rec.host), rec.to_json(), lease=lease)
            print(lease.id)
        elif step in ("puts", "burst-compact"):
            first, count = int(args[0]), int(args[1])
            revision = 0
            for i in range(first, first + count):
                revision = client.put(*endpoint(i)).header.revision
            if step == "burst-compact":
                client.compact(revision)
        elif step == "txn":
            first, count = int(args[0]), int(args[1])
            ok, _ = client.transaction(compare=[], failure=[], success=[
                client.transactions.put(*endpoint(i)) for i in range(first, first + count)])
            assert ok
        elif step == "del-prefix":
            client.delete_prefix(args[0])
        elif step == "revoke":
            client.revoke_lease(int(args[0]))
        elif step == "expected":
            me = args[0]
            _, hosts = store.snapshot(r.HOSTS)
            vteps = {k[len(r.HOSTS):]: json.loads(v)["vtep"] for k, v in hosts.items()}
            out = {}
            for item in store.read_prefix(f"{r.ENDPOINTS}{NETWORK}/")[1]:
                ep = json.loads(item.value)
                if ep["host"] != me and ep["host"] in vteps:
                    out[ep["mac"]] = vteps[ep["host"]]
            print(json.dumps(out))
        else:
            raise SystemExit(f"unknown step {step}")
    finally:
        store.close()


if __name__ == "__main__":
    main()
