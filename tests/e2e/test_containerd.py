"""containerd 1.6 (Debian's) runs a container with `ctr run --cni` and the lab host's own
conflist: the container, started by containerd on host0, pings a container on host1 across
VXLAN, and its removal runs DEL (endpoint record, OVS port and address gone).

containerd is the test's own (root, state and socket in a temp dir), in host0's network
namespace; the image is built here from busybox-static (tests/containerd/image.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from containerd.image import is_static, oci_archive
from containerd.runtime import NAMESPACE, Containerd, why_not_runnable

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab

IMAGE = "localhost/overlay-busybox:1"


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    assert ctr.add_container(lab, "peer", "host1").returncode == 0
    return lab


@pytest.fixture(scope="module")
def containerd(lab: Lab) -> Iterator[Containerd]:
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    if not is_static():
        pytest.skip("/bin/busybox is not static (apt: busybox-static), so it cannot be the "
                    "whole image")
    workdir = tempfile.mkdtemp(prefix="overlay-containerd-")
    daemon = Containerd(workdir, lab.host("host0").netns)
    daemon.start()
    archive = os.path.join(workdir, "image.tar")
    with open(archive, "wb") as fh:
        fh.write(oci_archive(IMAGE))
    imported = daemon.ctr("image", "import", archive)
    assert imported.returncode == 0, imported.stderr
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def etcd_endpoints(lab: Lab) -> list[dict[str, object]]:
    out = run(lab.etcdctl("get", "--prefix", "/overlay/v1/endpoints/", "--print-value-only"),
              netns=lab.underlay_ns).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ovs_ports_of(lab: Lab, container_id: str) -> str:
    return run(["ovs-vsctl", f"--db=unix:{lab.host('host0').ovs_dir}/db.sock", "--columns=name",
                "find", "Interface", f"external_ids:overlay-container-id={container_id}"]).stdout


def test_ctr_run_cni_pings_across_hosts_and_removal_runs_del(lab: Lab,
                                                            containerd: Containerd) -> None:
    h0 = lab.host("host0")
    peer = lab.containers["peer"]["ip"]
    ctr.wait_converged(lab)
    # What a runtime does with CNI: ctr gives the plugin "<namespace>-<id>" as CNI_CONTAINERID.
    name = "k" + os.urandom(3).hex()
    container_id = f"{NAMESPACE}-{name}"
    script = f"ip -4 -o addr show eth0; ping -c 3 -W 2 {peer}; echo ping-exit=$?; sleep 2"
    runner = subprocess.Popen(
        containerd.ctr_command("run", "--rm", "--cni", IMAGE, name, "sh", "-c", script,
                               cni_conf_dir=h0.cni_dir, cni_bin_dir=lab.cni_bin),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # While it runs: the endpoint is recorded in etcd, on host0, with its OVS port.
    deadline, seen = time.monotonic() + 30, None
    while seen is None and time.monotonic() < deadline and runner.poll() is None:
        seen = next((e for e in etcd_endpoints(lab) if e["container_id"] == container_id), None)
        time.sleep(0.1)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 0, f"{output}\ncontainerd log:\n{containerd.tail()}"
    assert seen is not None and seen["host"] == "host0", output
    address = str(seen["ips"][0]).split("/")[0]  # type: ignore[index]
    assert f"inet {address}/24" in output
    assert "3 packets transmitted, 3 packets received" in output and "ping-exit=0" in output
    # ctr run --rm removed the container, and with it (CNI DEL) everything ADD made.
    assert not any(e["container_id"] == container_id for e in etcd_endpoints(lab))
    assert ovs_ports_of(lab, container_id).strip() == ""
    allocations = run(lab.etcdctl("get", "--prefix", "/overlay/v1/ipam/my-net/",
                                  "--print-value-only"), netns=lab.underlay_ns).stdout
    assert container_id not in allocations
    with open(h0.agent_log) as fh:
        log = fh.read()
    assert f"DEL my-net {container_id}/eth0" in log
