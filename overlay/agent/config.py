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

Encrypted networks (docs/encryption.md; the kernel datapath and the wireguard module):

    encrypt_networks = false            # the default of netconfs that do not say `encrypted`
    wireguard_subnet = "100.64.0.0/16"  # WireGuard addresses: this subnet + the VTEP's host part
    wireguard_port = 51820
    wireguard_interface = "wg-ovl"
    wireguard_key_file = "/var/lib/overlay/wireguard/private.key"   # 0600, made on first start

Observability (both off/plain by default):

    metrics_address = "127.0.0.1:10390" # /metrics, /healthz, /readyz; ":10390" = 127.0.0.1 too;
                                        # "0.0.0.0:10390" opens it to every address
    log_format = "json"                 # one JSON object per line, for log shippers

`overlay-agent --config FILE --check-config` validates the file and the flags and exits: 0 when
the agent would start with them, 1 with one line per problem otherwise. It reads certificate
files but touches neither OVS nor etcd.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from overlay.store.tls import TlsFiles

DATAPATHS = ("auto", "system", "netdev")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


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
    # Seconds a peer keeps forwarding to a host whose lease lapsed (overlay/agent/reconciler.py):
    # an agent restart slower than lease_ttl must not cut its containers off. 0: drop at once.
    host_grace: float = 45.0
    etcd_timeout: float = 3.0
    log_level: str = "INFO"
    etcd_ca: str = ""                   # TLS to etcd: CA file, then our client cert and key
    etcd_cert: str = ""
    etcd_key: str = ""
    metrics_address: str = ""           # off unless set; see overlay.agent.metrics_server
    log_format: str = "text"            # or "json"
    encrypt_networks: bool = False
    wireguard_subnet: str = "100.64.0.0/16"
    wireguard_port: int = 51820
    wireguard_interface: str = "wg-ovl"
    wireguard_key_file: str = "/var/lib/overlay/wireguard/private.key"
    # Docker's network and IPAM driver (overlay/docker/), off unless set: the plugin's socket
    # (its name is the driver's: ovs.sock -> `-d ovs`) and the daemon's API socket.
    docker_plugin_socket: str = ""
    docker_host: str = "/run/docker.sock"
    # Which container labels become endpoint labels: those under this prefix, stripped
    # (`--label overlay.label/app=web` -> app=web); "" takes every label (docs/docker.md).
    docker_label_prefix: str = "overlay.label/"

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
    convert: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": _bool}
    return convert.get(str(kind), str)(value)


def _bool(value: Any) -> bool:
    """TOML gives a bool; a flag gives text."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return str(value).lower() in ("true", "1", "yes", "on")
    raise ValueError(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay-agent", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="TOML file (flags override it)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit (0 valid, 1 not)")
    for f in fields(AgentConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None)
    return parser


def build(config_file: str | None, flags: dict[str, Any]) -> AgentConfig:
    """The file, then the flags on top, checked; raises ConfigError."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                values.update(tomllib.load(fh))
        except OSError as exc:
            raise ConfigError(f"cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = set(values) - {f.name for f in fields(AgentConfig)}
    if unknown:
        raise ConfigError("unknown configuration keys: " + ", ".join(sorted(unknown)))
    coerced = {}
    for k, v in values.items():
        try:
            coerced[k] = _coerce(k, v)
        except (TypeError, ValueError):
            raise ConfigError(f"{k}: {v!r} is not a valid {_kind(k)}") from None
    cfg = replace(AgentConfig(), **coerced)
    problems = problems_of(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def _kind(name: str) -> str:
    return {"int": "integer", "float": "number", "bool": "boolean"}.get(
        str({f.name: f.type for f in fields(AgentConfig)}[name]), "string")


def problems_of(cfg: AgentConfig) -> list[str]:
    """What is wrong with a configuration that parsed, without touching OVS or etcd."""
    from overlay.agent.metrics_server import parse_address  # (keeps prometheus out of load())

    out = []
    if cfg.datapath not in DATAPATHS:
        out.append(f"datapath must be one of {', '.join(DATAPATHS)}, not {cfg.datapath!r}")
    if cfg.log_format not in LOG_FORMATS:
        out.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {cfg.log_format!r}")
    if cfg.log_level.upper() not in LOG_LEVELS:
        out.append(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {cfg.log_level!r}")
    if cfg.metrics_address:
        try:
            parse_address(cfg.metrics_address)
        except ValueError as exc:
            out.append(str(exc))
    if not cfg.etcd_endpoints:
        out.append("etcd_endpoints is empty")
    if cfg.lease_ttl < 2:
        out.append(f"lease_ttl must be at least 2 seconds, not {cfg.lease_ttl}")
    if cfg.host_grace < 0:
        out.append(f"host_grace must be 0 or more seconds, not {cfg.host_grace}")
    if cfg.etcd_timeout <= 0:
        out.append(f"etcd_timeout must be positive, not {cfg.etcd_timeout}")
    out += _wireguard_problems(cfg)
    if not cfg.ovsdb.startswith(("unix:", "tcp:", "ssl:")):
        out.append(f"ovsdb must be an OVSDB remote (unix:PATH, tcp:IP:PORT), not {cfg.ovsdb!r}")
    return out


def _wireguard_problems(cfg: AgentConfig) -> list[str]:
    out = []
    try:
        subnet = ipaddress.ip_network(cfg.wireguard_subnet)
        if subnet.version != 4 or not 8 <= subnet.prefixlen <= 30:
            out.append(f"wireguard_subnet must be an IPv4 subnet from /8 to /30, not "
                       f"{cfg.wireguard_subnet!r}")
    except ValueError:
        out.append(f"wireguard_subnet must be a subnet such as 100.64.0.0/16, not "
                   f"{cfg.wireguard_subnet!r}")
    if not 1 <= cfg.wireguard_port <= 65535:
        out.append(f"wireguard_port must be a UDP port (1-65535), not {cfg.wireguard_port}")
    if not 0 < len(cfg.wireguard_interface.encode()) <= 15 or "/" in cfg.wireguard_interface:
        out.append(f"wireguard_interface must be an interface name, not "
                   f"{cfg.wireguard_interface!r}")
    if not os.path.isabs(cfg.wireguard_key_file):
        out.append(f"wireguard_key_file must be an absolute path, not {cfg.wireguard_key_file!r}")
    return out


def load_with_options(argv: list[str] | None = None) -> tuple[AgentConfig, bool]:
    """(configuration, --check-config given). An unusable configuration ends the process:
    with --check-config it exits 1 with the message; otherwise argparse's usage error (2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "check_config")}
    try:
        return build(args.config, flags), bool(args.check_config)
    except ConfigError as err:
        if args.check_config:
            print(f"overlay-agent: invalid configuration: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        parser.error(str(err))


def load(argv: list[str] | None = None) -> AgentConfig:
    return load_with_options(argv)[0]
