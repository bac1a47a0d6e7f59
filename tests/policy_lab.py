"""What the e2e tests of network policy share: writing policies with the real overlayctl, and
reading the agents' metrics."""

from __future__ import annotations

import json
import os

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab

# A container's servers: the TCP ports given (one line, "ok", per connection; IPv4 and, where
# the netns has it, IPv6 on one socket) and UDP 53 (echo, IPv4).
SERVER = """
import socket, sys, threading
def listener(port):
    try:
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("::", port))
    except OSError:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    return s
def tcp(port):
    s = listener(port); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok\\n"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048); s.sendto(data, peer)
for p in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
threading.Thread(target=udp, args=(53,), daemon=True).start()
threading.Event().wait()
"""

# Exit 0 when `python3 -c CLIENT ADDRESS PORT` got the server's "ok" within 1.5 s.
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    sys.exit(0 if c.recv(3) == b"ok\\n" else 1)
except OSError:
    sys.exit(1)
"""

def policy(lab: Lab, *args: str, doc: dict[str, object] | None = None) -> None:
    out = run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
               "policy", *args], netns=lab.underlay_ns, check=False,
              input=json.dumps(doc).encode() if doc is not None else None)
    assert out.returncode == 0, out.stdout + out.stderr


def apply(lab: Lab, doc: dict[str, object], network: str = "my-net") -> None:
    policy(lab, "apply", "-f", "-", "--network", network, doc=doc)


def delete(lab: Lab, name: str, network: str = "my-net") -> None:
    policy(lab, "delete", name, "--network", network)


def metric(lab: Lab, host: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    status, body = lab.agent_http(lab.host(host))
    assert status == 200
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
