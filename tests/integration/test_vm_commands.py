"""`python -m overlay.lab.vm container` and `ping` against netns lab hosts: the code paths the
Vagrant VMs provision with, without VMs. Only the CNI directories are pointed into the lab, and
the namespaces carry the lab's test prefix."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator

import pytest

from overlay.cli import overlayctl
from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab import vm
from overlay.lab.shell import del_netns, netns_exists, run
from overlay.lab.topology import Lab


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=2)


@pytest.fixture
def on_host0(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(vm, "CNI_BIN", lab.cni_bin)
    monkeypatch.setattr(vm, "CNI_CONF_DIR", lab.hosts[0].cni_dir)
    name = f"{lab.prefix}-v0"
    yield name
    ctr.cni_exec(lab.cni_bin, "DEL", container_id=name, netns=f"/var/run/netns/{name}",
                 ifname="eth0", netconf=ctr.plugin_netconf(ctr.read_conflist(lab.hosts[0], "my-net")))
    del_netns(name)


def test_container_attaches_once_and_again_after_its_namespace_is_lost(
        on_host0: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert vm.main(["container", on_host0]) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    address = re.search(r"10\.0\.0\.\d+/24", first)
    assert address and "already" not in first, first

    assert vm.main(["container", on_host0]) == 0, capsys.readouterr()  # `vagrant provision`
    again = capsys.readouterr().out
    assert "already attached" in again and address.group() in again, again

    del_netns(on_host0)  # what a reboot does to it; etcd and OVS still hold the endpoint
    assert vm.main(["container", on_host0]) == 0, capsys.readouterr()
    assert "already" not in capsys.readouterr().out and netns_exists(on_host0)


def test_ping_a_container_on_the_other_host_by_name_and_by_address(
        lab: Lab, on_host0: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert vm.main(["container", on_host0]) == 0, capsys.readouterr()
    assert ctr.add_container(lab, "v1", "host1").returncode == 0
    target = lab.containers["v1"]["ip"]
    capsys.readouterr()

    assert vm.main(["ping", on_host0, target, "--etcd", "unused"]) == 0, capsys.readouterr()
    assert f"-> {target}: OK" in capsys.readouterr().out

    # etcd listens inside the underlay namespace only: read the real records there.
    def endpoints(etcd: str, **_: object) -> list[dict[str, object]]:
        overlayctl_bin = os.path.join(steps.scripts_dir(), "overlayctl")
        out = run([overlayctl_bin, *lab.overlayctl_etcd_args(), "--json", "endpoints"],
                  netns=lab.underlay_ns).stdout
        return list(json.loads(out))
    monkeypatch.setattr(overlayctl, "endpoints", endpoints)
    v1 = lab.containers["v1"]["container_id"]
    assert vm.main(["ping", on_host0, v1, "--etcd", "unused"]) == 0, capsys.readouterr()
    assert f"-> {v1} {target} (host1): OK" in capsys.readouterr().out
