"""overlay as a packager ships it: the wheel and the sdist built from this tree, the wheel
installed in a clean virtualenv, and overlay run from there (tests/package/wheel_cache.py
builds and caches them).

- the wheel holds every package of the tree, its data files and the generated gRPC stubs,
  and every module imports from the clean venv (a hand-written package list once left
  overlay.gateway out, and an agent installed from the wheel died at import);
- overlay-install from the wheel puts its files under --root, and the agent accepts the
  installed config;
- a two-host lab brought up by the wheel's own `python -m overlay.lab` runs agents and the
  plugin from the venv, and its containers ping across hosts;
- the standalone plugin `overlay-install --cni-only` writes (what a Kubernetes node gets),
  run by the system's python3 with the default conflist as installed, attaches a container on
  each host, and they ping each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab
from overlay.netlink.veth import hostside_name
from overlay_fixtures import eventually, new_prefix
from package.wheel_cache import TREE, Built, cached_build

pytestmark = pytest.mark.root
SCRIPTS = {"overlay-agent", "overlayctl", "ovs", "overlay-install"}


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    with cached_build() as b:
        yield b


def clean_env() -> dict[str, str]:
    """No PYTHONPATH or virtualenv of the caller: the installed wheel alone."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def in_venv(built: Built, cmd: list[str], cwd: str = "/",
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # cwd is not the tree: `python -m` puts the working directory first on sys.path.
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=clean_env(),
                          timeout=timeout)


def tree_packages() -> set[str]:
    found = set()
    for top, where in (("overlay", TREE), ("overlay_plugin_ovs", TREE / "plugins/ovs")):
        for init in (where / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(where).parts))
    return found


def test_the_wheel_holds_every_package_its_data_and_the_stubs(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    packages = {os.path.dirname(n).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert tree_packages() <= packages, tree_packages() - packages
    assert "overlay.gateway" in packages
    for data in ("overlay/install/overlay-agent.service", "overlay/install/agent.toml",
                 "overlay/install/overlay.conflist", "overlay/cni/v1/cni_pb2.py",
                 "overlay/cni/v1/cni_pb2_grpc.py", "overlay-0.1.0.dist-info/licenses/LICENSE"):
        assert data in names
    meta = zipfile.ZipFile(built.wheel).read("overlay-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    entry_points = zipfile.ZipFile(built.wheel).read("overlay-0.1.0.dist-info/entry_points.txt")
    assert SCRIPTS <= {line.split(" =")[0] for line in entry_points.decode().splitlines()}


def test_the_sdist_holds_what_building_the_wheel_needs(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "LICENSE", "proto/overlay/cni/v1/cni.proto",
                   "plugins/ovs/overlay_plugin_ovs/main.py", "overlay/install/overlay.conflist"):
        assert needed in names


def test_every_module_imports_from_the_clean_venv(built: Built) -> None:
    script = ("import importlib, pkgutil, overlay, overlay_plugin_ovs\n"
              "mods = [m.name for p in (overlay, overlay_plugin_ovs)\n"
              "        for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')\n"
              "        if not m.name.endswith('__main__')]\n"
              "for m in mods: importlib.import_module(m)\n"
              "print(overlay.__file__, len(mods))\n")
    out = in_venv(built, [built.bin("python"), "-c", script])
    assert out.returncode == 0, out.stderr
    where, count = out.stdout.split()
    assert where.startswith(str(built.venv)) and int(count) > 100
    assert SCRIPTS <= set(os.listdir(built.venv / "bin"))


def test_overlay_install_from_the_wheel(built: Built, tmp_path: Path) -> None:
    out = in_venv(built, [built.bin("overlay-install"), "--root", str(tmp_path)])
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("installed ") == 6
    unit = (tmp_path / "etc/systemd/system/overlay-agent.service").read_text()
    assert f"ExecStart={built.bin('overlay-agent')} --config /etc/overlay/agent.toml" in unit
    plugin = (tmp_path / "opt/cni/bin/ovs").read_text()
    assert plugin.startswith(f"#!{built.bin('python3')} -IS\n") and str(built.venv) in plugin
    check = in_venv(built, [built.bin("overlay-agent"), "--config",
                            str(tmp_path / "etc/overlay/agent.toml"), "--check-config"])
    assert check.returncode == 0, check.stderr
    json.loads((tmp_path / "etc/cni/net.d/10-overlay.conflist").read_text())


@pytest.fixture(scope="module")
def wheel_lab(built: Built) -> Iterator[Lab]:
    """Two hosts brought up by the wheel's own lab, from a directory outside the tree."""
    workdir = tempfile.mkdtemp(prefix="overlay-lab-")
    lab_cmd = [built.bin("python"), "-m", "overlay.lab", "--workdir", workdir]
    try:
        up = in_venv(built, [*lab_cmd, "up", "--hosts", "2", "--prefix", new_prefix()],
                     cwd=workdir, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Lab.load(workdir)
    finally:
        if os.environ.get("OVERLAY_TEST_KEEP") != "1":
            in_venv(built, [*lab_cmd, "down"], cwd=workdir)
            if os.path.exists(os.path.join(workdir, "lab.json")):
                Lab.load(workdir).down()  # what the wheel's `down` left


def test_a_lab_from_the_wheel_pings_across_hosts(built: Built, wheel_lab: Lab) -> None:
    demo = in_venv(built, [built.bin("python"), "-m", "overlay.lab", "--workdir",
                           wheel_lab.workdir, "demo"], cwd=wheel_lab.workdir)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count(": OK ") == 2, demo.stdout
    for h in wheel_lab.hosts:  # the agents run the venv's console script
        pid = Path(h.agent_pidfile).read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0].startswith(built.bin("python").encode())  # python3.11, its shebang
        assert argv[1] == built.bin("overlay-agent").encode()
    plugin = Path(wheel_lab.cni_bin, "ovs").read_text()
    assert plugin.startswith(f"#!{built.bin('python3')} -IS\n")


def test_the_standalone_plugin_and_default_conflist_attach_and_ping(built: Built, wheel_lab: Lab,
                                                                   tmp_path: Path) -> None:
    """What a Kubernetes node gets: the plugin file run by /usr/bin/python3, the conflist with
    the default agentSocket (each lab host's agent is at /run/overlay/agent.sock in that host's
    mount namespace, overlay.lab.hostmounts)."""
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3 (Debian's python3 package)")
    out = in_venv(built, [built.bin("overlay-install"), "--root", str(tmp_path), "--cni-only"])
    assert out.returncode == 0, out.stderr
    cni_path = f"{tmp_path}/opt/cni/bin"
    conflist = json.loads((tmp_path / "etc/cni/net.d/10-overlay.conflist").read_text())
    netconf = ctr.plugin_netconf(conflist)
    pods = {f"{wheel_lab.prefix}-p{i}": h for i, h in enumerate(wheel_lab.hosts)}
    addresses: dict[str, str] = {}
    try:
        for ns, h in pods.items():
            add_netns(ns)
            outcome = ctr.cni_exec(cni_path, "ADD", container_id=ns, netns=f"/var/run/netns/{ns}",
                                   ifname="eth0", netconf=netconf, host_dir=h.dir)
            assert outcome.returncode == 0, outcome.stdout + outcome.stderr
            addresses[ns] = ctr.result_address(outcome.json())
        (a, b) = pods
        ports = run(["ovs-vsctl", f"--db=unix:{pods[a].ovs_dir}/db.sock", "list-ports",
                     wheel_lab.bridge], check=False).stdout.split()
        assert hostside_name(a, "eth0") in ports, ports
        for src, dst in ((a, b), (b, a)):
            assert eventually(lambda s=src, d=dst: ctr.ping(s, addresses[d], 1).ok), (src, dst)
            assert ctr.ping(src, addresses[dst]).complete
    finally:
        for ns, h in pods.items():
            if ns in addresses:
                gone = ctr.cni_exec(cni_path, "DEL", container_id=ns, netns=f"/var/run/netns/{ns}",
                                    ifname="eth0", netconf=netconf, host_dir=h.dir)
                assert gone.returncode == 0, gone.stdout + gone.stderr
            del_netns(ns)
    for ns, h in pods.items():  # each was on its host's bridge; DEL took it off
        ports = run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "list-ports", wheel_lab.bridge],
                    check=False).stdout.split()
        assert hostside_name(ns, "eth0") not in ports, ports
