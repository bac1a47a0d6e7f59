"""Attack: a container, or a host, writes into etcd (issue 15, point 6).

In a lab with the default settings (what `make lab` runs: etcd over https, client
certificates, a user and a role per host), from inside container c0's namespace:
  - etcd's port answers (the container reaches it: the attack is possible at all), but
  - an HTTP POST to the v3 gRPC gateway's /v3/kv/put, in plain http or in https without a client
    certificate, writes nothing;
and with certificates the lab's CA signed:
  - a host's own certificate cannot write outside /overlay/v1/, nor change users or roles;
  - a certificate whose CN names no etcd user can neither read nor write.

Run with OVERLAY_TEST_TLS=0 (a plain lab, as `make lab TLS=0`) and the container's POST puts its
key: these tests fail, which is what they are for.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab import pki
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay.store.tls import TlsFiles

INTRUDER_KEYS = ("/intruder", "/overlay/v1/networks/intruder")

# Inside the container: one request, and what came back ("REFUSED <why>" if none did).
_POST = """
import json, socket, ssl, sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2].encode()
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # an attacker checks nothing
try:
    r = urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"),
                               timeout=10, context=ctx)
    print(r.status, r.read().decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode(errors="replace"))
except (urllib.error.URLError, OSError) as e:
    print("REFUSED", getattr(e, "reason", e))
"""

_CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
print("connected")
"""


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)  # the defaults, as a user gets them
    out = ctr.add_container(lab, "c0", "host0")
    assert out.returncode == 0, out.stdout + out.stderr
    return lab


def in_c0(lab: Lab, script: str, *args: str) -> str:
    proc = run(["python3", "-c", script, *args], netns=lab.containers["c0"]["netns"], check=False,
               timeout=30)
    return (proc.stdout + proc.stderr).strip()


def put_body(key: str) -> str:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()
    return json.dumps({"key": b64(key), "value": b64("owned by c0")})


def stored(lab: Lab, key: str) -> bool:
    """Whether `key` exists, asked as etcd's root (who sees every key) in a TLS lab."""
    who = lab.root_tls if lab.tls else None
    out = run(lab.etcdctl("get", key, "--keys-only", as_=who), netns=lab.underlay_ns).stdout
    return key in out.split()


def test_the_container_reaches_etcds_port(lab: Lab) -> None:
    # Without this the attacks below would prove nothing: the port is reachable from c0.
    assert in_c0(lab, _CONNECT, lab.etcd_ip, "2379") == "connected"


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("key", INTRUDER_KEYS)
def test_a_post_from_the_container_puts_nothing(lab: Lab, scheme: str, key: str) -> None:
    answer = in_c0(lab, _POST, f"{scheme}://{lab.etcd_ip}:2379/v3/kv/put", put_body(key))
    print(f"{scheme} POST {key}: {answer}")
    assert not answer.startswith("200"), answer
    assert not stored(lab, key)


def etcdctl_as(lab: Lab, files: TlsFiles, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["etcdctl", "--dial-timeout=3s", "--command-timeout=5s", "--endpoints",
                f"https://{lab.etcd_ip}:2379", "--cacert", files.ca, "--cert", files.cert,
                "--key", files.key, *args], netns=lab.underlay_ns, check=False)


def test_a_host_certificate_writes_only_under_overlay_v1(lab: Lab) -> None:
    host0 = lab.host_tls("host0")
    outside = etcdctl_as(lab, host0, "put", "/intruder", "from host0")
    assert outside.returncode != 0 and "permission denied" in outside.stderr, outside
    assert not stored(lab, "/intruder")
    assert etcdctl_as(lab, host0, "get", "/intruder").returncode != 0  # nor read there
    # ... but inside the prefix it works: the role is not simply "nothing".
    inside = etcdctl_as(lab, host0, "put", "/overlay/v1/probe-host0", "1")
    assert inside.returncode == 0, inside.stderr
    assert etcdctl_as(lab, host0, "del", "/overlay/v1/probe-host0").returncode == 0


@pytest.mark.parametrize("admin", [["auth", "disable"], ["user", "add", "--no-password", "c0"],
                                   ["role", "grant-permission", "--prefix=true", "overlay-host",
                                    "readwrite", "/"],
                                   ["user", "grant-role", "host0", "root"]])
def test_a_host_certificate_cannot_change_users_or_roles(lab: Lab, admin: list[str]) -> None:
    proc = etcdctl_as(lab, lab.host_tls("host0"), *admin)
    assert proc.returncode != 0 and "permission denied" in proc.stderr, proc
    auth = run(lab.etcdctl("user", "get", "host0", as_=lab.root_tls), netns=lab.underlay_ns).stdout
    assert "Roles: overlay-host" in auth, auth
    outside = etcdctl_as(lab, lab.host_tls("host1"), "put", "/intruder", "x")
    assert outside.returncode != 0  # authentication is still on


def test_a_certificate_of_no_etcd_user_can_do_nothing(lab: Lab) -> None:
    # Signed by the lab's CA (so TLS accepts it), but its CN is nobody etcd knows.
    directory = os.path.join(lab.workdir, "nobody")
    pair = pki.issue(directory, "nobody", lab.pki.ca, "nobody", client=True)
    nobody = TlsFiles(lab.pki.ca.cert, pair.cert, pair.key)
    write = etcdctl_as(lab, nobody, "put", "/overlay/v1/networks/intruder", "x")
    assert write.returncode != 0, write
    read = etcdctl_as(lab, nobody, "get", "--prefix", "/overlay/v1/")
    assert read.returncode != 0 and "/overlay/" not in read.stdout, read
    assert not stored(lab, "/overlay/v1/networks/intruder")
