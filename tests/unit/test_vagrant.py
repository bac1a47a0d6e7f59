"""The Vagrant lab's Vagrantfile: valid, and provisioned by the project's own shared steps.

No VM is started and no box is fetched. `vagrant validate` only loads and checks the
configuration. To see the provisioning commands exactly as Vagrant would run them, the
Vagrantfile is also loaded by Ruby with a stand-in `Vagrant.configure` that records them; each
`overlay.lab.vm` command is then parsed by that module's own argument parser.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from overlay.lab import vm, vm_tls

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"
VENV = "/opt/overlay/venv"
LAB = f"{VENV}/bin/python -m overlay.lab.vm "

RECORDER = r"""
require "json"

class Stub
  def initialize(log, machine = nil)
    @log, @machine = log, machine
  end

  def define(name, *_args, **_opts)
    yield Stub.new(@log, name)
  end

  def provision(name, **opts)
    @log[:provision] << opts.merge(machine: @machine, name: name)
  end

  def synced_folder(host, guest, **opts)
    @log[:synced] << opts.merge(host: host, guest: guest)
  end

  def network(kind, **opts)
    @log[:network] << opts.merge(machine: @machine, kind: kind)
  end

  def provider(*_args)
    yield Stub.new(@log, @machine) if block_given?
  end

  def method_missing(*_args, **_opts)
    self
  end

  def respond_to_missing?(*_args)
    true
  end
end

module Vagrant
  LOG = { provision: [], synced: [], network: [] }

  def self.configure(_version)
    yield Stub.new(LOG)
  end
end

load ARGV[0]
puts JSON.generate(Vagrant::LOG)
"""


def test_provisioning_goes_through_the_shared_steps() -> None:
    text = VAGRANTFILE.read_text()
    assert "scripts/install-deps.sh" in text
    assert '"VENV" => VENV' in text and f'VENV = "{VENV}"' in text
    assert "-m overlay.lab.vm" in text
    assert (ROOT / "scripts" / "install-deps.sh").is_file()
    assert (ROOT / "overlay" / "lab" / "vm.py").is_file()


def test_vagrant_validate(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("the `vagrant` binary is not installed (apt-get install vagrant)")
    env = {**os.environ,
           # offline and side-effect free: no version or box update checks, no .vagrant/ here
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"), "VAGRANT_NO_COLOR": "1",
           "OVERLAY_VAGRANT_PKI": str(tmp_path / "pki")}  # (made when the Vagrantfile loads)

    def validate(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["vagrant", "validate", *flags], cwd=VAGRANT_DIR, env=env,
                              capture_output=True, text=True, timeout=120)
    proc = validate()
    if proc.returncode != 0 and "usable" in proc.stderr:
        # No provider works on this machine (no VirtualBox, no vagrant-libvirt plugin): the
        # provider blocks cannot be checked here, everything else still is.
        proc = validate("--ignore-provider")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("no `ruby` to load the Vagrantfile with (Debian's vagrant package brings it)")
    script = tmp_path_factory.mktemp("vagrant") / "record.rb"
    script.write_text(RECORDER)
    pki = tmp_path_factory.mktemp("pki")
    plugin = tmp_path_factory.mktemp("plugin") / "overlay-cni-ovs"  # as make deps builds it
    plugin.write_bytes(b"\x7fELF")
    proc = subprocess.run([ruby, str(script), str(VAGRANTFILE)], cwd=VAGRANT_DIR,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OVERLAY_VAGRANT_PKI": str(pki),
                               "OVERLAY_PLUGIN_BINARY": str(plugin)})
    assert proc.returncode == 0, proc.stderr
    log: dict[str, Any] = json.loads(proc.stdout)
    return log


def steps_of(recorded: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each machine's shell steps (the file uploads are checked on their own)."""
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for p in recorded["provision"]:
        if p["type"] != "file":
            by_machine.setdefault(p["machine"], []).append(p)
    return by_machine


def test_each_vm_is_given_only_its_own_certificate(recorded: dict[str, Any]) -> None:
    uploads: dict[str, dict[str, str]] = {}
    for p in recorded["provision"]:
        if p["type"] == "file" and p["destination"] != "/tmp/overlay-cni-ovs":
            uploads.setdefault(p["machine"], {})[p["destination"]] = p["source"]
    assert set(uploads) == {"node1", "node2"}
    for machine, files in uploads.items():
        names = {os.path.basename(d) for d in files}
        assert {"ca.crt", "client.crt", "client.key"} <= names and "ca.key" not in names
        assert all(d.startswith(vm_tls.UPLOAD_DIR + "/") for d in files)
        assert all(os.path.basename(os.path.dirname(s)) == machine for s in files.values())
        cn = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                             next(s for d, s in files.items() if d.endswith("/client.crt"))],
                            capture_output=True, text=True, check=True).stdout
        assert cn.strip().replace(" ", "") == f"subject=CN={machine}", cn
    assert "etcd.key" in {os.path.basename(d) for d in uploads["node1"]}  # the etcd VM
    assert "etcd.key" not in {os.path.basename(d) for d in uploads["node2"]}


def lab_argv(step: dict[str, Any]) -> list[str]:
    assert step["type"] == "shell" and step["inline"].startswith(LAB), step
    return shlex.split(step["inline"][len(LAB):])


def test_each_vm_is_given_the_compiled_plugin_before_its_deps_step(
        recorded: dict[str, Any]) -> None:
    for machine in ("node1", "node2"):
        steps = [p for p in recorded["provision"] if p["machine"] == machine]
        names = [p.get("destination") if p["type"] == "file" else p["inline"] for p in steps]
        upload = names.index("/tmp/overlay-cni-ovs")
        deps = next(i for i, n in enumerate(names) if "install-deps.sh" in str(n))
        assert upload < deps, names
        assert os.path.basename(steps[upload]["source"]) == "overlay-cni-ovs"


def test_the_repository_is_synced_where_provisioning_looks(recorded: dict[str, Any]) -> None:
    src = [s for s in recorded["synced"] if not s.get("disabled")]
    assert len(src) == 1 and (VAGRANT_DIR / src[0]["host"]).resolve() == ROOT
    for steps in steps_of(recorded).values():
        deps = steps[0]  # everything else runs from the virtualenv it makes
        assert deps["inline"].split()[-1] == f"{src[0]['guest']}/scripts/install-deps.sh"
        # The box is offline and has no Go: no build in the VM; the host's compiled plugin is
        # uploaded (a file step) and installed into the venv.
        assert deps["env"] == {"VENV": VENV, "SRC": src[0]["guest"], "WITH_PLUGIN_BUILD": "0",
                               "PLUGIN_BINARY": "/tmp/overlay-cni-ovs"}


def test_every_other_step_is_a_valid_overlay_lab_vm_command(recorded: dict[str, Any]) -> None:
    parsed = {machine: [vm.build_parser().parse_args(lab_argv(s)) for s in steps[1:]]
              for machine, steps in steps_of(recorded).items()}
    assert len(parsed) >= 2
    ips = {n["machine"]: n["ip"] for n in recorded["network"] if n["kind"] == "private_network"}
    etcd = [(m, a.listen) for m, args in parsed.items() for a in args if a.cmd == "etcd"]
    assert len(etcd) == 1, "exactly one VM runs etcd"
    assert etcd[0][1] == ips[etcd[0][0]], "etcd listens on its VM's private address"
    for machine, args in parsed.items():
        commands = [a.cmd for a in args]
        assert "host" in commands and "container" in commands, (machine, commands)
        assert commands.index("host") < commands.index("container"), (machine, commands)
        if "etcd" in commands:
            assert commands.index("etcd") < commands.index("host"), (machine, commands)
        host = args[commands.index("host")]
        assert host.name == machine and host.underlay_ip == ips[machine]
        assert urlparse(host.etcd).hostname == etcd[0][1], "every agent uses the lab's etcd"
        assert urlparse(host.etcd).scheme == "https", "TLS by default"
    etcd_args = next(a for args in parsed.values() for a in args if a.cmd == "etcd")
    assert etcd_args.tls and sorted(etcd_args.host) == sorted(parsed), "an etcd user per VM"
    where = {a.name: m for m, args in parsed.items() for a in args if a.cmd == "container"}
    pings = [(m, a) for m, args in parsed.items() for a in args if a.cmd == "ping"]
    assert pings, "some VM shows the cross-host ping"
    for machine, ping in pings:
        assert where[ping.name] == machine and where[ping.target] != machine, "a cross-host ping"


def test_the_vms_networks_are_isolated(recorded: dict[str, Any]) -> None:
    # libvirt adds no forwarding or NAT to a network without <forward>: the VMs may reach each
    # other and this machine, nothing beyond it.
    private = [n for n in recorded["network"] if n["kind"] == "private_network"]
    assert private
    for net in private:
        assert net["libvirt__forward_mode"] == "none", net
        assert net["libvirt__network_name"] == "overlay-lab", net
    text = VAGRANTFILE.read_text()
    assert 'lv.management_network_mode = "none"' in text
    assert 'lv.management_network_name = "overlay-mgmt"' in text


def test_box_and_driver_come_from_the_environment() -> None:
    text = VAGRANTFILE.read_text()
    assert 'ENV.fetch("OVERLAY_BOX", "overlay/bookworm")' in text
    assert 'ENV.fetch("OVERLAY_LIBVIRT_DRIVER", "kvm")' in text
    assert (VAGRANT_DIR / "box" / "build.sh").is_file()
