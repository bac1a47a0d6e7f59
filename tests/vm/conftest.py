"""The VM tier: the Vagrant lab booted for real (libvirt; KVM where it runs guests, else TCG),
once per session, then destroyed. Every test drives the VMs over ssh; nothing is faked.

Run it with `make test-vm` (it sets OVERLAY_VM_TESTS=1). Without that variable the tier skips
and says so: a plain `pytest tests` must not spend a quarter of an hour booting VMs.

    OVERLAY_VM_KEEP=1   leave the VMs running after the session (then `make vagrant-lab-down`)
    OVERLAY_BOX=...     another box than the one vagrant/box/build.sh builds (needs internet)

If something the tier needs is missing, the session skips naming it; if `vagrant up` fails, every
test errors with the tail of Vagrant's output. It never falls back to `vagrant validate`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vagrant_lab import VagrantLab, Vm

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
BOX_CACHE = os.environ.get("BOX_CACHE", "/var/cache/overlay/box")
DEFAULT_BOX = "overlay/bookworm"
ENV = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
       "VAGRANT_NO_COLOR": "1"}
TIMINGS: dict[str, float] = {}
FIGURES: dict[str, str] = {}  # measured by tests, printed, never asserted (see bench/ for targets)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(argv: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def missing_prerequisite() -> str | None:
    if os.environ.get("OVERLAY_VM_TESTS") != "1":
        return ("the VM tier boots two VMs (minutes under TCG); run it with `make test-vm` "
                "(OVERLAY_VM_TESTS=1)")
    if os.geteuid() != 0:
        return "the VM tier needs root (libvirtd on qemu:///system, the box build)"
    for tool, package in (("vagrant", "vagrant"), ("virsh", "libvirt-clients"),
                          ("libvirtd", "libvirt-daemon-system"),
                          ("qemu-system-x86_64", "qemu-system-x86"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {package})"
    plugins = run(["vagrant", "plugin", "list"], 120)
    if "vagrant-libvirt" not in plugins.stdout:
        return "the vagrant-libvirt plugin is missing (apt-get install vagrant-libvirt)"
    return None


def timed(name: str, argv: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = run(argv, timeout, cwd)
    TIMINGS[name] = time.monotonic() - start
    return proc


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VagrantLab]:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    if os.environ.get("OVERLAY_BOX", DEFAULT_BOX) == DEFAULT_BOX:
        box = timed("box (build.sh; cached if its inputs are unchanged)",
                    [str(VAGRANT_DIR / "box" / "build.sh"), BOX_CACHE], 1800)
        assert box.returncode == 0, "building the box failed:\n" + tail(box.stderr)
    libvirt = timed("libvirtd up + KVM probe", [str(VAGRANT_DIR / "libvirt-up.sh")], 120)
    assert libvirt.returncode == 0, "libvirtd did not start:\n" + libvirt.stderr
    driver = libvirt.stdout.split()[-1]
    ENV["OVERLAY_LIBVIRT_DRIVER"] = driver
    up = timed(f"vagrant up (domain type {driver})", ["vagrant", "up", "--provider=libvirt"],
               2400, VAGRANT_DIR)  # boot_timeout (TCG) 1200 s, then provisioning
    try:
        if up.returncode != 0:
            pytest.fail(f"vagrant up failed ({up.returncode}):\n{tail(up.stdout)}\n{tail(up.stderr)}")
        ssh_config = tmp_path_factory.mktemp("vagrant") / "ssh_config"
        conf = run(["vagrant", "ssh-config"], 120, VAGRANT_DIR)
        assert conf.returncode == 0, conf.stderr
        ssh_config.write_text(conf.stdout)
        vms = [Vm("node1", ssh_config), Vm("node2", ssh_config)]
        for vm in vms:
            vm.open()
        try:
            yield VagrantLab(vms[0], vms[1], up.stdout, driver, TIMINGS, FIGURES)
        finally:
            for vm in vms:
                vm.close()
    finally:
        if os.environ.get("OVERLAY_VM_KEEP") != "1":
            down = timed("vagrant-lab-down (destroy, networks, volume)",
                         [str(VAGRANT_DIR / "vagrant-lab-down.sh")], 600)
            assert down.returncode == 0, "vagrant-lab-down failed:\n" + down.stdout + down.stderr


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("VM tier wall times")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
    if FIGURES:
        terminalreporter.section("VM tier figures (kernel datapath under TCG; printed, not asserted)")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
