"""containerd's CRI plugin, driven the way a kubelet drives it: a containerd of the test's own
with the CRI plugin on, its CNI configuration and plugins in the test's directories, and a CRI
v1 client over its socket.

No kubelet can be installed here, but the kubelet's side of CRI is a gRPC client: this one
calls the same RPCs (RunPodSandbox, PodSandboxStatus, CreateContainer, StartContainer,
ExecSync, StopPodSandbox, RemovePodSandbox) with the same messages. The API is Kubernetes'
own `runtime.v1` proto (cri_api.proto, unchanged from kubernetes/cri-api), compiled when the
module is imported (grpc.protos_and_services): no generated code is kept.

The pause image is busybox `sleep` (image.py): a sandbox container only has to hold the pod's
namespaces, and StopPodSandbox kills it with SIGKILL. Images are imported into the CRI's
namespace `k8s.io` with `ctr image import`, so nothing is pulled.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import grpc

from containerd.runtime import Containerd

pb, services = grpc.protos_and_services("containerd/cri_api.proto")

K8S_NAMESPACE = "k8s.io"  # where the CRI plugin keeps its containers and images
PAUSE_IMAGE = "localhost/overlay-pause:1"
PAUSE_ENTRYPOINT = ("/bin/sleep", "2147483647")


# Written by containerd and libcni wherever the configuration says nothing.
PRIVATE_PATHS = ("/var/lib/cni", "/run/containerd")


def mount_of(path: str) -> str:
    """The mount point `path` lies on."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int


class CriContainerd(Containerd):
    """A containerd with the CRI plugin, whose CNI is the conflist(s) in `cni_conf_dir` and the
    plugins in `cni_bin_dir`. Nothing outside `workdir` is configured: the `opt` plugin's
    directory too is the test's."""

    def __init__(self, workdir: str, netns: str, *, cni_conf_dir: str, cni_bin_dir: str) -> None:
        super().__init__(workdir, netns)
        self.cni_conf_dir, self.cni_bin_dir = cni_conf_dir, cni_bin_dir
        self.logs = os.path.join(workdir, "pod-logs")

    def command(self, containerd: list[str]) -> list[str]:
        """containerd in a mount namespace of its own where the paths it writes outside its
        configuration are the test's directories: libcni's result cache (/var/lib/cni, not
        configurable in containerd 1.6) and the shims' sockets and runc's state
        (/run/containerd). Propagation is left unchanged, so the pods' network namespaces,
        which the CRI plugin mounts in /run/netns (a shared mount since `ip netns` made it
        one), still appear outside, where the agent opens them as CNI_NETNS. The mount that
        holds the two mount points is made private first: the binds never show outside."""
        binds = []
        for target in PRIVATE_PATHS:
            source = os.path.join(self.dir, "private" + target.replace("/", "-"))
            os.makedirs(source, exist_ok=True)
            os.makedirs(target, exist_ok=True)  # an empty mount point, as runtime.py makes
            binds += [mount_of(target), source, target]
        script = ("set -e; while [ \"$1\" != -- ]; do mount --make-private \"$1\"; "
                  "mount --bind \"$2\" \"$3\"; shift 3; done; shift; exec \"$@\"")
        return ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", script,
                "cri-mounts", *binds, "--", *containerd]

    def config(self) -> str:
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        base = self.config_without_cri()
        return base + f"""[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"
{cri}
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # A sandbox asks for oom_score_adj -998, which this machine refuses to lower ("Permission
  # denied" from runc's nsexec): keep containers at containerd's own value, as in rootless setups.
  restrict_oom_score_adj = true
  [{cri[1:-1]}.cni]
    bin_dir = "{self.cni_bin_dir}"
    conf_dir = "{self.cni_conf_dir}"
    max_conf_num = 1
"""

    def config_without_cri(self) -> str:
        return "\n".join(line for line in super().config().splitlines()
                         if not line.startswith("disabled_plugins")) + "\n"

    def start(self, timeout: float = 30) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while True:  # the CRI service answers a little after containerd's own API
            try:
                self.client().version()
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the CRI plugin did not answer: {self.tail()}") from None
                time.sleep(0.2)

    def client(self) -> Cri:
        return Cri(self.socket, self.logs)

    def import_image(self, archive: str) -> None:
        done = self.ctr_in(K8S_NAMESPACE, "image", "import", archive)
        if done.returncode != 0:
            raise RuntimeError(f"ctr image import: {done.stderr}")

    def ctr_in(self, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", self.socket, "--namespace", namespace, *args],
                              capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        """Every pod stopped and removed (their CNI DEL, their mounts), then containerd."""
        if self._proc is not None:
            client = self.client()
            try:
                pods = client.list_pods()
            except grpc.RpcError:
                pods = []  # containerd is gone already: nothing it could still clean up
            for pod in pods:
                try:
                    client.stop_pod(pod)
                    client.remove_pod(pod)
                except grpc.RpcError as err:  # say so, and go on with the others
                    print(f"containerd could not remove pod {pod}: {err}")
        super().stop()


class Cri:
    """A CRI v1 client: the calls a kubelet makes for a pod, with its messages."""

    def __init__(self, socket: str, log_dir: str, timeout: float = 120) -> None:
        channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = services.RuntimeServiceStub(channel)
        self.log_dir = log_dir
        self.timeout = timeout

    def version(self) -> Any:
        return self.runtime.Version(pb.VersionRequest(version="v1"), timeout=5)

    def sandbox_config(self, name: str, namespace: str = "default",
                       ports: tuple[PortMapping, ...] = ()) -> Any:
        uid = f"{namespace}-{name}-uid"
        log_dir = os.path.join(self.log_dir, uid)
        os.makedirs(log_dir, exist_ok=True)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname=name, log_directory=log_dir,
            port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=p.container_port,
                                          host_port=p.host_port) for p in ports],
            labels={"app": name}, linux=pb.LinuxPodSandboxConfig())

    def run_pod(self, config: Any) -> str:
        reply = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                           timeout=self.timeout)
        return str(reply.pod_sandbox_id)

    def pod_status(self, pod_id: str) -> Any:
        return self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                             timeout=self.timeout).status

    def pod_netns(self, pod_id: str) -> str:
        """The path of the pod's network namespace (CNI_NETNS), from the verbose status."""
        reply = self.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=self.timeout)
        spec = json.loads(reply.info["info"])["runtimeSpec"]
        return next(str(ns["path"]) for ns in spec["linux"]["namespaces"]
                    if ns["type"] == "network")

    def pod_ips(self, pod_id: str) -> list[str]:
        network = self.pod_status(pod_id).network
        return [network.ip] + [extra.ip for extra in network.additional_ips]

    def list_pods(self) -> list[str]:
        reply = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=self.timeout)
        return [item.id for item in reply.items]

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=self.timeout)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=self.timeout)

    def start_container(self, pod_id: str, sandbox: Any, name: str, image: str,
                        command: list[str]) -> str:
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=0),
                                    image=pb.ImageSpec(image=image), command=command,
                                    log_path=f"{name}.log")
        created = self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox), timeout=self.timeout)
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=created.container_id),
                                    timeout=self.timeout)
        return str(created.container_id)

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 30) -> tuple[int, str]:
        """What `kubectl exec` runs: exit code and stdout+stderr."""
        reply = self.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                         timeout=timeout), timeout=timeout + 30)
        return int(reply.exit_code), (reply.stdout + reply.stderr).decode(errors="replace")

    def network_status(self) -> dict[str, Any]:
        """The runtime's conditions, and with `verbose` the CNI configuration it loaded."""
        reply = self.runtime.Status(pb.StatusRequest(verbose=True), timeout=self.timeout)
        conditions = {c.type: c.status for c in reply.status.conditions}
        return {"conditions": conditions, "info": {k: _json_or_text(v)
                                                   for k, v in reply.info.items()}}


def _json_or_text(value: str) -> Any:
    """Status' info values are JSON ("cniconfig") or plain words ("lastCNILoadStatus": "OK")."""
    try:
        return json.loads(value)
    except ValueError:
        return value
