"""The labs' etcd users and roles (overlay.lab.etcdauth) and the Vagrant lab's certificates
(overlay.lab.vm_tls), without etcd: the etcdctl calls in order, and the files each VM gets."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from overlay.lab import etcdauth, vm, vm_tls
from overlay.store.tls import TlsFiles


class FakeEtcdctl:
    """Users and roles as etcd keeps them; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.users: dict[str, set[str]] = {}
        self.roles: dict[str, set[str]] = {}
        self.auth = False

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        a = list(args)
        self.calls.append(a)
        ok = True
        if a[:2] == ["role", "get"]:
            ok = a[2] in self.roles
        elif a[:2] == ["role", "add"]:
            self.roles[a[2]] = set()
        elif a[:2] == ["role", "grant-permission"] and a[2] == "--prefix=true":
            self.roles[a[3]].add(f"{a[4]} {a[5]} prefix=True")
        elif a[:2] == ["role", "grant-permission"]:  # role permission key end: a range
            self.roles[a[2]].add(f"{a[3]} [{a[4]}, {a[5]})")
        elif a[:2] == ["role", "revoke-permission"]:
            held = {p for p in self.roles[a[3]] if p.endswith(f" {a[4]} prefix=True")}
            ok = bool(held)
            self.roles[a[3]] -= held
        elif a[:2] == ["user", "get"]:
            ok = a[2] in self.users
        elif a[:2] == ["user", "add"]:
            assert a[2] == "--no-password"  # certificate only: no password to leak
            self.users[a[3]] = set()
        elif a[:2] == ["user", "grant-role"]:
            ok = a[3] in self.roles
            self.users[a[2]].add(a[3])
        elif a == ["auth", "enable"]:
            ok = "root" in self.users.get("root", set())
            self.auth = ok
        return subprocess.CompletedProcess(a, 0 if ok else 1, "", "" if ok else "error")


def test_hosts_may_read_and_write_overlay_v1_only_read_policies_and_nothing_else() -> None:
    etcd = FakeEtcdctl()
    etcdauth.enable(etcd, ["node1", "node2"])
    assert etcd.auth and etcd.calls[-1] == ["auth", "enable"]  # users first, then auth
    assert etcd.roles[etcdauth.HOST_ROLE] == {
        "readwrite [/overlay/v1/, /overlay/v1/policies/)",
        "read [/overlay/v1/policies/, /overlay/v1/policies0)",
        "readwrite [/overlay/v1/policies0, /overlay/v10)"}
    assert etcd.roles[etcdauth.OPERATOR_ROLE] == {"readwrite /overlay/v1/ prefix=True"}
    assert etcd.users == {"root": {"root"}, "overlay-operator": {etcdauth.OPERATOR_ROLE},
                          "node1": {etcdauth.HOST_ROLE}, "node2": {etcdauth.HOST_ROLE}}


def test_set_up_converges_when_run_again() -> None:
    etcd = FakeEtcdctl()
    etcdauth.enable(etcd)
    etcdauth.add_host(etcd, "host0")
    before = (dict(etcd.users), dict(etcd.roles))
    etcd.calls.clear()
    etcdauth.enable(etcd)
    etcdauth.add_host(etcd, "host0")
    assert (etcd.users, etcd.roles) == before
    assert not [c for c in etcd.calls if c[:2] in (["user", "add"], ["role", "add"])]


def test_a_host_role_of_before_loses_its_write_on_policies_after_the_new_grants() -> None:
    etcd = FakeEtcdctl()
    etcdauth.ensure_role(etcd, etcdauth.HOST_ROLE)  # the role as labs made it before
    etcdauth.enable(etcd)
    assert "readwrite /overlay/v1/ prefix=True" not in etcd.roles[etcdauth.HOST_ROLE]
    grants = [i for i, c in enumerate(etcd.calls) if c[:2] == ["role", "grant-permission"]]
    revoke = next(i for i, c in enumerate(etcd.calls) if c[:2] == ["role", "revoke-permission"])
    assert revoke > max(grants[:4])  # never a moment without write access to endpoints


@pytest.mark.parametrize("name", ["root", "overlay-operator"])
def test_a_host_cannot_take_an_admins_or_the_operators_name(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be named"):
        etcdauth.add_host(FakeEtcdctl(), name)


def test_a_failing_call_is_reported() -> None:
    def refuse(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(args), 1, "", "etcdserver: permission denied")
    with pytest.raises(RuntimeError, match="role add overlay-host failed: etcdserver: permission"):
        etcdauth.enable(refuse)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (apt)")
def test_each_vm_gets_its_own_certificate_and_only_the_etcd_vm_the_server_and_roots(
        tmp_path: Path) -> None:
    vm_tls.make(str(tmp_path), "192.168.56.11", ["node1", "node2"], "node1")
    assert sorted(os.listdir(tmp_path / "node1")) == sorted(vm_tls.files_for("node1", "node1"))
    assert sorted(os.listdir(tmp_path / "node2")) == sorted(vm_tls.CLIENT_FILES)
    for node in ("node1", "node2"):
        subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                                  str(tmp_path / node / "client.crt")],
                                 capture_output=True, text=True, check=True).stdout
        assert subject.replace(" ", "").strip() == f"subject=CN={node}"
        assert os.stat(tmp_path / node / "client.key").st_mode & 0o777 == 0o600
    # Installed in the VM: moved out of the upload folder, keys private.
    upload, target = tmp_path / "upload", tmp_path / "etc"
    shutil.copytree(tmp_path / "node2", upload)
    assert vm_tls.install(str(upload), str(target)) == sorted(vm_tls.CLIENT_FILES)
    assert not upload.exists() and os.stat(target / "client.key").st_mode & 0o777 == 0o600
    assert vm_tls.install(str(upload), str(target)) == []  # provisioned again: nothing new
    assert vm_tls.client_tls(str(target)) == TlsFiles(
        str(target / "ca.crt"), str(target / "client.crt"), str(target / "client.key"))


def test_vm_agent_settings_carry_the_certificate() -> None:
    files = vm_tls.client_tls()
    values = vm.agent_settings("node2", "https://192.168.56.11:2379", "eth1", tls=files)
    assert (values["etcd_ca"], values["etcd_cert"], values["etcd_key"]) == (
        "/etc/overlay/pki/ca.crt", "/etc/overlay/pki/client.crt", "/etc/overlay/pki/client.key")
    assert "etcd_cert" not in vm.agent_settings("n", "http://a:1", "eth1")
    assert vm.etcd_tls("https://a:2379") == files and not vm.etcd_tls("http://a:2379").enabled
