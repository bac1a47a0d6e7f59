"""The agent's configuration: a TOML file, then command-line flags on top.

Example (/etc/overlay/agent.toml):

    host = "node1"
    underlay_interface = "eth1"
    etcd_endpoints = ["http://192.168.56.10:2379"]
    ovsdb = "unix:/var/run/openvswitch/db.sock"
    socket = "/run/overlay/agent.sock"
    datapath = "auto"        # or "system" / "netdev"

etcd over TLS with a client certificate (all three empty, the default: plain http):

    etcd_endpoints = ["https://192.168.56.10:2379"]
    etcd_ca = "/etc/overlay/pki/ca.crt"          # the CA that signed etcd's server certificate
    etcd_cert = "/etc/overlay/pki/client.crt"    # ours, signed by a CA etcd trusts
    etcd_key = "/etc/overlay/pki/client.key"
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from overlay.store.tls import TlsFiles

DATAPATHS = ("auto", "system", "netdev")


@dataclass(frozen=True)
class AgentConfig:
    host: str = field(default_factory=socket.gethostname)
    underlay_interface: str = "eth0"
    underlay_ip: str = ""               # default: the interface's first IPv4 address
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    ovs_rundir: str = ""                # default: OVS_RUNDIR, else the ovsdb socket's directory
    socket: str = "/run/overlay/agent.sock"
    datapath: str = "auto"
    bridge: str = "br-int"
    underlay_bridge: str = "br-phy"     # netdev only
    tunnel_port: str = "vxlan0"
    lease_ttl: int = 10
    etcd_timeout: float = 3.0
    log_level: str = "INFO"
    etcd_ca: str = ""                   # TLS to etcd: CA file, then our client cert and key
    etcd_cert: str = ""
    etcd_key: str = ""

    @property
    def etcd_tls(self) -> TlsFiles:
        return TlsFiles(self.etcd_ca, self.etcd_cert, self.etcd_key)

    @property
    def rundir(self) -> str:
        if self.ovs_rundir:
            return self.ovs_rundir
        if os.environ.get("OVS_RUNDIR"):
            return os.environ["OVS_RUNDIR"]
        return os.path.dirname(self.ovsdb.removeprefix("unix:"))


def _coerce(name: str, value: Any) -> Any:
    if name == "etcd_endpoints":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(value)
    kind = {f.name: f.type for f in fields(AgentConfig)}[name]
    return {"int": int, "float": float}.get(str(kind), str)(value)


def load(argv: list[str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="overlay-agent", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="TOML file (flags override it)")
    for f in fields(AgentConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as fh:
            values.update(tomllib.load(fh))
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    unknown = set(values) - {f.name for f in fields(AgentConfig)}
    if unknown:
        parser.error("unknown configuration keys: " + ", ".join(sorted(unknown)))
    cfg = replace(AgentConfig(), **{k: _coerce(k, v) for k, v in values.items()})
    if cfg.datapath not in DATAPATHS:
        parser.error(f"datapath must be one of {', '.join(DATAPATHS)}")
    return cfg
