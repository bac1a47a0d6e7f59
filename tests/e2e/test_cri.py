"""Kubernetes' path to the plugin: kubelet -> CRI -> containerd's CRI plugin -> libcni -> ovs.

No kubelet here, so the test is the kubelet: a CRI v1 client (tests/containerd/cri.py) asks a
containerd on each of two lab hosts to run pod sandboxes, exactly the RPCs a kubelet makes. Each
containerd's CRI plugin has the lab's network as its conflist, with `portmap` chained for
hostPorts, and a pause image built here. What a cluster relies on is checked end to end:
addresses (PodSandboxStatus against etcd), pod-to-pod traffic across hosts, a hostPort from
outside the host, the pod's name in the endpoint record and `overlayctl endpoints`, a pod name
Kubernetes would refuse, and StopPodSandbox/RemovePodSandbox leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from containerd.cri import PAUSE_ENTRYPOINT, PAUSE_IMAGE, CriContainerd, PortMapping
from containerd.image import is_static, oci_archive
from containerd.runtime import why_not_runnable
from libcni.build import REFERENCE_PLUGINS

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import KEEP, eventually

IMAGE = "localhost/overlay-busybox:1"
NETWORK, POD_NAMESPACE = "my-net", "shop"
WEB_PORT, HOST_PORT = 8080, 30080
CHAINED = ("loopback", "portmap")  # the CRI plugin brings up lo itself with `loopback`


def conflist(lab: Lab, h: LabHost) -> dict[str, Any]:
    """The host's network as a kubelet's node would have it: ours, then portmap for hostPort."""
    ours = ctr.read_conflist(h, NETWORK)
    ours["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True},
                            "snat": True})
    return ours


def cni_dirs(workdir: str, lab: Lab, h: LabHost) -> tuple[str, str]:
    conf_dir, bin_dir = os.path.join(workdir, "net.d"), os.path.join(workdir, "bin")
    os.makedirs(conf_dir)
    os.makedirs(bin_dir)
    with open(os.path.join(conf_dir, "10-overlay.conflist"), "w") as fh:
        json.dump(conflist(lab, h), fh)
    os.symlink(os.path.join(lab.cni_bin, "ovs"), os.path.join(bin_dir, "ovs"))
    for plugin in CHAINED:
        os.symlink(os.path.join(REFERENCE_PLUGINS, plugin), os.path.join(bin_dir, plugin))
    return conf_dir, bin_dir


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=2)


@pytest.fixture(scope="module")
def runtimes(lab: Lab) -> Iterator[dict[str, Any]]:
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)
    if not is_static():
        pytest.skip("/bin/busybox is not static (apt: busybox-static), so it cannot be the "
                    "whole image")
    out: dict[str, Any] = {}
    try:
        for h in lab.hosts:
            workdir = tempfile.mkdtemp(prefix="overlay-cri-")
            conf_dir, bin_dir = cni_dirs(workdir, lab, h)
            daemon = CriContainerd(workdir, h.netns, cni_conf_dir=conf_dir, cni_bin_dir=bin_dir)
            out[h.name] = daemon
            daemon.start()
            for name, entrypoint in ((PAUSE_IMAGE, PAUSE_ENTRYPOINT), (IMAGE, ())):
                archive = os.path.join(workdir, f"{name.split('/')[1]}.tar")
                with open(archive, "wb") as fh:
                    fh.write(oci_archive(name, entrypoint))
                daemon.import_image(archive)
        yield out
    finally:
        for daemon in out.values():
            daemon.stop()
            if not KEEP:  # OVERLAY_TEST_KEEP=1: containerd's log and config stay for debugging
                shutil.rmtree(daemon.dir, ignore_errors=True)


@dataclass(frozen=True)
class Pod:
    name: str
    host: str
    id: str
    container: str  # a busybox container in the pod, for `kubectl exec`-like commands
    ip: str


@pytest.fixture(scope="module")
def pods(lab: Lab, runtimes: dict[str, Any]) -> dict[str, Pod]:
    """web-0 on host0 (a TCP server behind hostPort 30080) and db-0 on host1."""
    out = {}
    for name, host, ports, command in (
            ("web-0", "host0", (PortMapping(WEB_PORT, HOST_PORT),),
             ["nc", "-ll", "-p", str(WEB_PORT), "-e", "echo", "hello-from-web-0"]),
            ("db-0", "host1", (), ["sleep", "2147483647"])):
        client = runtimes[host].client()
        sandbox = client.sandbox_config(name, POD_NAMESPACE, ports)
        pod_id = client.run_pod(sandbox)
        container = client.start_container(pod_id, sandbox, "main", IMAGE, command)
        out[name] = Pod(name, host, pod_id, container, client.pod_ips(pod_id)[0])
    return out


def records(lab: Lab) -> list[dict[str, Any]]:
    out = run(lab.etcdctl("get", "--prefix", "/overlay/v1/endpoints/", "--print-value-only"),
              netns=lab.underlay_ns).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def record_of(lab: Lab, pod_id: str) -> dict[str, Any] | None:
    return next((rec for rec in records(lab) if rec["container_id"] == pod_id), None)


def allocations(lab: Lab) -> str:
    return run(lab.etcdctl("get", "--prefix", f"/overlay/v1/ipam/{NETWORK}/"),
               netns=lab.underlay_ns).stdout


def ovs_ports(h: LabHost) -> list[str]:
    return run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "list-ports", "br-int"]).stdout.split()


def overlayctl(lab: Lab, *args: str) -> Any:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                *args], netns=lab.underlay_ns, check=False)


def test_the_cri_plugin_loaded_our_conflist_and_reports_the_network_ready(
        runtimes: dict[str, Any]) -> None:
    for daemon in runtimes.values():
        status = daemon.client().network_status()
        assert status["conditions"]["NetworkReady"] is True, status
        loaded = json.dumps(status["info"].get("cniconfig", {}))
        assert '"type": "ovs"' in loaded and '"type": "portmap"' in loaded, loaded[:2000]


def test_run_pod_sandbox_gives_each_pod_the_address_etcd_holds(lab: Lab,
                                                               pods: dict[str, Pod]) -> None:
    for pod in pods.values():
        rec = record_of(lab, pod.id)
        assert rec is not None, f"no endpoint record for sandbox {pod.id}"
        assert rec["host"] == pod.host and rec["network"] == NETWORK
        # PodSandboxStatus is what a kubelet copies into the pod's status.podIP.
        assert [ip.split("/")[0] for ip in rec["ips"]] == [pod.ip]
    assert pods["web-0"].ip != pods["db-0"].ip


def test_pods_reach_each_other_across_hosts(lab: Lab, runtimes: dict[str, Any],
                                            pods: dict[str, Pod]) -> None:
    ctr.wait_converged(lab)
    for src, dst in (("db-0", "web-0"), ("web-0", "db-0")):
        client = runtimes[pods[src].host].client()
        code, out = client.exec_sync(pods[src].container,
                                     ["ping", "-c", "3", "-W", "2", pods[dst].ip])
        assert code == 0 and "3 packets received" in out, f"{src} -> {dst}: {out}"


def test_a_host_port_reaches_the_pod_from_outside_the_host(lab: Lab,
                                                           pods: dict[str, Pod]) -> None:
    """From the underlay (another machine's view): host0's address, hostPort 30080, answered by
    the server in web-0, through portmap's DNAT in host0's namespace."""
    vtep = lab.host("host0").vtep
    client = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5);"
              "s.settimeout(5); print(s.recv(100).decode().strip())")

    def answered() -> bool:
        out = run(["python3", "-c", client, vtep, str(HOST_PORT)], netns=lab.underlay_ns,
                  check=False)
        return out.stdout.strip() == "hello-from-web-0"
    # The server in the container may still be starting when the test begins.
    assert eventually(answered, 20), run(["iptables-save", "-t", "nat"],
                                         netns=lab.host("host0").netns).stdout


def test_endpoint_records_name_the_pod_and_overlayctl_shows_it(lab: Lab,
                                                                pods: dict[str, Pod]) -> None:
    for pod in pods.values():
        rec = record_of(lab, pod.id)
        assert rec is not None
        assert (rec["pod_namespace"], rec["pod_name"]) == (POD_NAMESPACE, pod.name)
    shown = json.loads(overlayctl(lab, "--json", "endpoints").stdout)
    assert {row["container_id"]: row["pod"] for row in shown
            if row["container_id"] in {p.id for p in pods.values()}} == {
        p.id: f"{POD_NAMESPACE}/{p.name}" for p in pods.values()}
    table = overlayctl(lab, "endpoints").stdout.splitlines()
    assert "POD" in table[0].split()
    assert any(pods["web-0"].id in line and "shop/web-0" in line for line in table[1:]), table


def nothing_of(lab: Lab, h: LabHost, pod_id: str, ports_before: list[str]) -> None:
    assert record_of(lab, pod_id) is None
    assert pod_id not in allocations(lab)
    assert ovs_ports(h) == ports_before
    assert pod_id not in run(["iptables-save"], netns=h.netns).stdout  # portmap's chains


def test_a_pod_namespace_kubernetes_would_refuse_fails_with_the_cni_error_and_leaves_nothing(
        lab: Lab, runtimes: dict[str, Any], pods: dict[str, Pod]) -> None:
    h = lab.host("host1")
    client = runtimes["host1"].client()
    before, pods_before, held = ovs_ports(h), set(client.list_pods()), allocations(lab)
    with pytest.raises(grpc.RpcError) as info:
        client.run_pod(client.sandbox_config("bad-0", "Not_A_Namespace"))
    message = info.value.details() or ""
    assert "K8S_POD_NAMESPACE" in message and "DNS label" in message, message
    # containerd ran DEL after the failed ADD and removed the sandbox: ours made nothing.
    assert set(client.list_pods()) == pods_before
    assert not any(rec.get("pod_name") == "bad-0" for rec in records(lab))
    assert ovs_ports(h) == before and allocations(lab) == held


def test_stop_and_remove_run_del_and_leave_nothing_behind(lab: Lab, runtimes: dict[str, Any],
                                                          pods: dict[str, Pod]) -> None:
    h = lab.host("host1")
    client = runtimes["host1"].client()
    before = ovs_ports(h)
    sandbox = client.sandbox_config("gone-0", POD_NAMESPACE, (PortMapping(80, 30081),))
    pod_id = client.run_pod(sandbox)
    netns = client.pod_netns(pod_id)
    rec = record_of(lab, pod_id)
    assert rec is not None and rec["pod_name"] == "gone-0" and rec["netns"] == netns
    assert len(ovs_ports(h)) == len(before) + 1 and pod_id in allocations(lab)
    assert pod_id in run(["iptables-save"], netns=h.netns).stdout  # portmap's DNAT, by sandbox
    client.stop_pod(pod_id)  # the kubelet's order: Stop (CNI DEL) ...
    nothing_of(lab, h, pod_id, before)
    client.stop_pod(pod_id)  # ... again, as a kubelet may (must not fail) ...
    client.remove_pod(pod_id)  # ... then Remove
    assert pod_id not in client.list_pods()
    nothing_of(lab, h, pod_id, before)
    assert not os.path.exists(netns)  # the pod's network namespace, unmounted and removed
    with open(h.agent_log) as fh:
        assert f"DEL {NETWORK} {pod_id}/eth0" in fh.read()
    doctor = overlayctl(lab, "doctor", "--socket", lab.host("host0").socket,
                        "--socket", h.socket)
    assert doctor.returncode == 0 and "no problems found" in doctor.stdout, doctor.stdout
