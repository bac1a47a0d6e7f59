"""`docker run -p HOST:CONTAINER`: published ports as DNAT rules on this host.

libnetwork maps ports only for its own bridge driver; a remote driver is handed the bindings in
ProgramExternalConnectivity and must make them itself. A connection to the host's port (from
outside: nat PREROUTING; from the host itself: nat OUTPUT) is sent to the container's address
and port; it then reaches the container through the network's gateway on this host, and the
replies come back the same way (conntrack undoes the DNAT). Every rule carries the comment
`overlay-docker:<endpoint>`, so Revoke, Leave and DeleteEndpoint remove exactly an endpoint's
rules, whatever happened to the agent between.

Not supported (refused, not ignored): a host port of 0 (Docker's "any free port": it would
never learn which one we chose) and port ranges.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import threading
from typing import Any

from overlay.docker.protocol import DockerError

PORTMAP = "com.docker.network.portmap"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
TAG = "overlay-docker:"


def tag(endpoint_id: str) -> str:
    return TAG + endpoint_id[:12]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True,
                          timeout=30)


def _bindings(options: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    """(protocol, host port, host IP or "", container port) of each binding."""
    out = []
    raw = options.get(PORTMAP) or []
    if not isinstance(raw, list):
        raise DockerError(f"{PORTMAP} must be a list of port bindings")
    for b in raw:
        if not isinstance(b, dict):
            raise DockerError(f"{PORTMAP}: {b!r} is not a port binding")
        proto, port = b.get("Proto"), b.get("Port")
        host_port, end = b.get("HostPort"), b.get("HostPortEnd") or b.get("HostPort")
        host_ip = b.get("HostIP") or ""
        if proto not in PROTOCOLS or not isinstance(port, int) or not 0 < port < 65536:
            raise DockerError(f"port binding {b!r}: unknown protocol or port")
        if not isinstance(host_port, int) or not 0 < host_port < 65536:
            raise DockerError(f"-p {port}: give the host port too, as -p HOSTPORT:{port} (the "
                              "ovs driver does not pick free ports)")
        if end != host_port:
            raise DockerError(f"-p {host_port}-{end}: port ranges are not supported by the ovs "
                              "driver; publish one port per -p")
        if host_ip:
            try:
                if ipaddress.ip_address(host_ip).version != 4:
                    raise DockerError(f"-p {host_ip}: IPv6 is not supported by the ovs driver")
            except ValueError:
                raise DockerError(f"-p: {host_ip!r} is not an IP address") from None
        out.append((PROTOCOLS[proto], host_port, "" if host_ip == "0.0.0.0" else host_ip, port))
    return out


def _rules(comment: str, ip: str, binding: tuple[str, int, str, int]) -> list[list[str]]:
    proto, host_port, host_ip, port = binding
    match = ["-p", proto, "--dport", str(host_port)]
    match += ["-d", host_ip] if host_ip else ["-m", "addrtype", "--dst-type", "LOCAL"]
    target = ["-m", "comment", "--comment", comment, "-j", "DNAT",
              "--to-destination", f"{ip}:{port}"]
    return [["PREROUTING", *match, *target], ["OUTPUT", *match, *target]]


def _saved_rules() -> list[list[str]]:
    saved = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                           timeout=30)
    return [shlex.split(line) for line in saved.stdout.splitlines() if line.startswith("-A ")]


class Publisher:
    """Which endpoints have rules is read from iptables once (the first call after the agent
    starts: rules of an earlier run count) and then kept here: Leave, DeleteEndpoint and
    Revoke each ask, and an iptables-save per call cost tens of ms on a loaded host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one iptables edit at a time
        self._tagged: set[str] | None = None  # comments of the rules in place

    def _present(self) -> set[str]:
        if self._tagged is None:
            self._tagged = {w for rule in _saved_rules() for w in rule if w.startswith(TAG)}
        return self._tagged

    def program(self, endpoint_id: str, ip: str, options: dict[str, Any]) -> None:
        """All of the endpoint's bindings, or none (a failure removes those added)."""
        bindings = _bindings(options)
        comment = tag(endpoint_id)
        with self._lock:
            self._revoke(comment)
            if bindings:
                self._present().add(comment)
            for binding in bindings:
                for rule in _rules(comment, ip, binding):
                    proc = _iptables("-t", "nat", "-A", *rule)
                    if proc.returncode != 0:
                        self._revoke(comment)
                        raise DockerError(f"cannot publish port {binding[1]}: "
                                          f"{proc.stderr.strip()}")

    def revoke(self, endpoint_id: str) -> None:
        with self._lock:
            self._revoke(tag(endpoint_id))

    def _revoke(self, comment: str) -> None:
        if comment not in self._present():
            return
        for rule in _saved_rules():
            if comment in rule:
                proc = _iptables("-t", "nat", "-D", *rule[1:])
                if proc.returncode != 0:  # kept as present: the next revoke tries again
                    raise DockerError(f"cannot remove rule {' '.join(rule)}: "
                                      f"{proc.stderr.strip()}")
        self._present().discard(comment)
