"""What the e2e tests of network policy share: writing policies with the real overlayctl, and
reading the agents' metrics."""

from __future__ import annotations

import json
import os

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab

# A container's servers: the TCP ports given (one line, "ok", per connection) and UDP 53
# (echo); IPv4 and, where the netns has it, IPv6 on one socket.
SERVER = """
import socket, sys, threading
def listener(port, kind=socket.SOCK_STREAM):
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("::", port))
    except OSError:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port))
    return s
def tcp(port):
    s = listener(port); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok\\n"); c.close()
def udp(port):
    s = listener(port, socket.SOCK_DGRAM)
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
# `python3 -c OUTCOME tcp|udp ADDRESS PORT` prints "ok" (the server answered), "timeout", or
# the errno the socket failed with: what a sender sees of a policy.
OUTCOME = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        c = socket.create_connection((host, port), timeout=3)
        print("ok" if c.recv(3) == b"ok\\n" else "bad")
    else:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        c = socket.socket(family, socket.SOCK_DGRAM); c.settimeout(3)
        c.connect((host, port)); c.send(b"hi")
        print("ok" if c.recv(16) == b"hi" else "bad")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(e.errno)
"""


def outcome(lab: Lab, src: str, address: str, proto: str, port: int) -> str:
    """What container `src` sees of a connection to address:port (OUTCOME)."""
    return run(["python3", "-c", OUTCOME, proto, address, str(port)],
               netns=lab.containers[src]["netns"]).stdout.strip()

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
