"""A dual-stack network across two hosts: IPv4 and IPv6 both cross, IPv6 spoofing does not."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import eventually

RANGES = [[{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00:6::/64"}]]


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2, network=None)
    ctr.define_network(lab, "dual", 60, "10.6.0.0/24")
    for h in lab.hosts:
        path = ctr.conflist_path(h, "dual")
        with open(path) as fh:
            conflist = json.load(fh)
        conflist["plugins"][0]["ipam"] = {"type": "overlay", "ranges": RANGES}
        with open(path, "w") as fh:
            json.dump(conflist, fh)
    for name, host in (("d0", "host0"), ("d1", "host1")):
        out = ctr.add_container(lab, name, host, "dual")
        assert out.returncode == 0, out.stdout
        assert [ip["address"] for ip in out.json()["ips"]][1].startswith("fd00:6::")
    ctr.wait_converged(lab)
    return lab


def test_ipv4_and_ipv6_cross_hosts(lab: Lab) -> None:
    src = lab.containers["d0"]["netns"]
    for target in ("10.6.0.2", "fd00:6::2"):
        proc = run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target], netns=src, check=False)
        assert proc.returncode == 0 and " 0% packet loss" in proc.stdout, proc.stdout


def test_ipv6_from_a_foreign_address_is_dropped(lab: Lab) -> None:
    src = lab.containers["d0"]["netns"]
    run(["ip", "-6", "addr", "add", "fd00:6::99/64", "dev", "eth0", "nodad"], netns=src)
    try:
        proc = run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", "fd00:6::99",
                    "fd00:6::2"], netns=src, check=False)
        assert proc.returncode != 0 and " 100% packet loss" in proc.stdout, proc.stdout
    finally:
        run(["ip", "-6", "addr", "del", "fd00:6::99/64", "dev", "eth0"], netns=src)


def overlayctl_policy(lab: Lab, *args: str, doc: dict[str, object] | None = None) -> None:
    out = run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
               "policy", *args], netns=lab.underlay_ns, check=False,
              input=json.dumps(doc).encode() if doc is not None else None)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_policy_denies_ipv6_it_cannot_police(lab: Lab) -> None:
    """Policies compile to IPv4 rules only: IPv6 to a port a policy polices is dropped (fails
    closed), never a way around the policy; deleting the policy gives IPv6 back."""
    src = lab.containers["d0"]["netns"]

    def pings(target: str) -> bool:
        return run(["ping", "-c", "1", "-W", "1", target], netns=src, check=False).returncode == 0

    # Every endpoint of the network, ingress from the network's IPv4 subnet only.
    doc = {"name": "v4-only", "endpointSelector": {},
           "ingress": [{"from": [{"ipBlock": {"cidr": "10.6.0.0/24"}}]}]}
    overlayctl_policy(lab, "apply", "-f", "-", "--network", "dual", doc=doc)
    try:
        assert eventually(lambda: not pings("fd00:6::2")), "IPv6 went around the policy"
        assert pings("10.6.0.2")  # what the policy allows still passes
    finally:
        overlayctl_policy(lab, "delete", "v4-only", "--network", "dual")
    assert eventually(lambda: pings("fd00:6::2"))
