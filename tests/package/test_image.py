"""The agent's image (deploy/image/build.sh) imported into a containerd and run as the
DaemonSet runs it: the init container's command from deploy/kubernetes/overlay.yaml installs
the plugin and the conflist onto a stand-in for the node, the node's python3 runs that plugin,
and the agent in the image accepts a configuration.

Building the image takes minutes (debootstrap from the Debian mirror), so this runs only when
asked: OVERLAY_IMAGE=1 (the build is cached by deploy/image/build.sh, keyed by its inputs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from containerd.runtime import Containerd, why_not_runnable

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.environ.get("OVERLAY_IMAGE") != "1",
                                 reason="builds the image (minutes): set OVERLAY_IMAGE=1")]
yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra (make deps)")


def manifest() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/overlay.yaml").read_text()))
    return {d["kind"]: d for d in docs if d}


@pytest.fixture(scope="module")
def image() -> str:
    out = subprocess.run([str(ROOT / "deploy/image/build.sh")], capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def containerd(netns: str, tmp_path: Path) -> Iterator[Containerd]:
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    daemon = Containerd(str(tmp_path / "containerd"), os.path.basename(netns))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def run_in_image(daemon: Containerd, name: str, argv: list[str],
                 mounts: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binds = [f"--mount=type=bind,src={src},dst={dst},options=rbind:rw"
             for src, dst in mounts.items()]
    return daemon.ctr("run", "--rm", *binds, name, f"t-{os.getpid()}-{len(mounts)}", *argv,
                      timeout=300)


def test_the_image_runs_the_init_container_and_the_agent(image: str, containerd: Containerd,
                                                         tmp_path: Path) -> None:
    docs = manifest()
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    name = init["image"]
    imported = containerd.ctr("image", "import", image, timeout=600)
    assert imported.returncode == 0, imported.stderr
    assert name in containerd.ctr("image", "ls", "-q").stdout.split()
    node, config = tmp_path / "node", tmp_path / "config"
    for sub in ("opt/cni/bin", "etc/cni/net.d"):
        (node / sub).mkdir(parents=True)
    config.mkdir()
    for key, text in docs["ConfigMap"]["data"].items():
        (config / key).write_text(text)
    mounts = {str(node / "opt/cni/bin"): "/host/opt/cni/bin",
              str(node / "etc/cni/net.d"): "/host/etc/cni/net.d",
              str(config): "/etc/overlay/config"}
    out = run_in_image(containerd, name, init["command"], mounts)
    assert out.returncode == 0, out.stdout + out.stderr
    conflist = json.loads((node / "etc/cni/net.d/10-overlay.conflist").read_text())
    assert conflist == json.loads(docs["ConfigMap"]["data"]["10-overlay.conflist"])
    # The plugin runs on the node, outside the image: the compiled one when the image was built
    # with Go at hand (deploy/image/build.sh), needing nothing of the node.
    if shutil.which("go"):
        assert (node / "opt/cni/bin/ovs").read_bytes().startswith(b"\x7fELF")
    version = subprocess.run([str(node / "opt/cni/bin/ovs")], input=b'{"cniVersion":"1.0.0"}',
                             env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    # The agent in the image takes the ConfigMap's keys (plain etcd here: no Secret mounted).
    (config / "agent.toml").write_text('underlay_interface = "eth0"\n'
                                       'etcd_endpoints = ["http://127.0.0.1:2379"]\n'
                                       + "".join(line + "\n" for line in
                                                 docs["ConfigMap"]["data"]["agent.toml"]
                                                 .splitlines() if line.startswith(
                                                     ("ovsdb", "socket", "datapath", "metrics"))))
    agent = run_in_image(containerd, name, ["overlay-agent", "--config",
                                            "/etc/overlay/config/agent.toml", "--check-config"],
                         {str(config): "/etc/overlay/config"})
    assert agent.returncode == 0, agent.stdout + agent.stderr
