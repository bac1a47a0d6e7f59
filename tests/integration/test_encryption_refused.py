"""Encrypted networks where they cannot run: the netns lab's userspace (netdev) datapath, on a
kernel without WireGuard. ADD through the real plugin, agent, OVS and etcd is refused with a CNI
error naming the reason and leaves nothing behind; the host publishes no key; `overlayctl doctor`
says which hosts cannot carry an encrypted network. Nothing is sent, in clear or otherwise.
(tests/vm/test_encryption.py runs encryption where it can: the kernel datapath in VMs.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def ctl(lab: Lab, *args: str, check: bool = True) -> str:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                *args], netns=lab.underlay_ns, check=check).stdout


def test_add_of_an_encrypted_network_is_refused_naming_why_and_leaves_nothing(
        lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    before = host_snapshot(lab, h, netns)
    conf = cni.netconf(h, name="secret-net", vxlanID=4242, encrypted=True,
                       ipam={"type": "overlay", "subnet": "10.42.0.0/24"})
    out = cni("ADD", conf, container_id="enc-1", netns=netns)
    assert out.returncode != 0
    err = out.json()
    assert err["code"] == 2, err  # the spec's "unsupported field"
    assert "encrypted" in err["msg"] and "cannot encrypt" in err["msg"], err
    assert "userspace (netdev) datapath" in err["msg"], err
    assert "kernel datapath" in err["details"] and "wireguard" in err["details"], err
    # No veth, no OVS port, no allocation, no endpoint or network record, no VNI claim.
    assert host_snapshot(lab, h, netns) == before
    # The same container on an unencrypted network beside it works as ever.
    plain = cni("ADD", cni.netconf(h), container_id="enc-1", netns=netns)
    assert plain.returncode == 0, plain.stdout
    assert cni("DEL", cni.netconf(h), container_id="enc-1", netns=netns).returncode == 0


def test_encrypted_false_is_an_ordinary_network(lab: Lab, netns: str) -> None:
    cni, h = Cni(lab), lab.hosts[0]
    out = cni("ADD", cni.netconf(h, encrypted=False), container_id="enc-2", netns=netns)
    assert out.returncode == 0, out.stdout
    assert cni("DEL", cni.netconf(h), container_id="enc-2", netns=netns).returncode == 0


def test_the_host_publishes_no_key_and_doctor_names_it(lab: Lab) -> None:
    (host,) = json.loads(ctl(lab, "--json", "hosts"))
    assert host["datapath"] == "netdev"
    assert (host["wg_public_key"], host["wg_address"], host["wg_port"]) == ("", "", 0)
    assert (host["key"], host["handshake"]) == ("-", "-")
    # An encrypted network recorded in etcd (from anywhere: overlayctl needs no agent).
    ctl(lab, "network-create", "enc-net", "--vni", "4243", "--subnet", "10.43.0.0/24",
        "--encrypted")
    try:
        networks = {n["name"]: n for n in json.loads(ctl(lab, "--json", "networks"))}
        assert networks["enc-net"]["encrypted"] is True
        doctor = run([os.path.join(steps.scripts_dir(), "overlayctl"),
                      *lab.overlayctl_etcd_args(), "doctor"], netns=lab.underlay_ns,
                     check=False)
        assert doctor.returncode == 1
        assert f"host {lab.hosts[0].name} cannot carry the encrypted network(s) enc-net" in \
            doctor.stdout and "netdev" in doctor.stdout, doctor.stdout
    finally:
        run(lab.etcdctl("del", "--prefix", "/overlay/v1/networks/enc-net"), netns=lab.underlay_ns)
        run(lab.etcdctl("del", "/overlay/v1/vnis/4243"), netns=lab.underlay_ns)
