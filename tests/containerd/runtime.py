"""A containerd of the test's own (root, state, socket, config in one directory), running in a
lab host's network namespace, and `ctr` to drive it.

ctr 1.6's `--cni` reads the CNI configuration from /etc/cni/net.d and the plugins from
/opt/cni/bin, with no flag to point elsewhere. So every ctr call runs in a private mount
namespace where the lab host's conflist directory and the lab's plugin directory are
bind-mounted there, and the test's own directory on libcni's cache /var/lib/cni: the machine's
own /etc/cni/net.d, /opt/cni/bin and /var/lib/cni stay untouched (they are
created empty when missing, as mount points), and tests running in parallel each see theirs.
`nsenter --net` (not `ip netns exec`, which remounts /sys and loses the cgroup mounts runc
needs) puts containerd in the host's network namespace.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

CNI_CONF_DIR, CNI_BIN_DIR = "/etc/cni/net.d", "/opt/cni/bin"
CNI_CACHE_DIR = "/var/lib/cni"  # where libcni keeps each attachment's result
NAMESPACE = "overlay-test"


def why_not_runnable() -> str | None:
    missing = [t for t in ("containerd", "ctr", "runc", "nsenter", "unshare")
               if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt: containerd runc util-linux)"
    return None


class Containerd:
    def __init__(self, workdir: str, netns: str) -> None:
        self.dir = workdir
        self.netns = netns
        self.socket = os.path.join(workdir, "containerd.sock")
        self.log = os.path.join(workdir, "containerd.log")
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """containerd's config.toml: everything in the test's directory, CRI off (ctr only)."""
        return f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""

    def command(self, containerd: list[str]) -> list[str]:
        """How containerd is started (a subclass may wrap it)."""
        return containerd

    def start(self, timeout: float = 30) -> None:
        os.makedirs(self.dir, exist_ok=True)
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w") as fh:
            fh.write(self.config())
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(["nsenter", f"--net=/var/run/netns/{self.netns}", "containerd",
                              "--config", config]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.tail()}")
            if os.path.exists(self.socket) and self.ctr("version").returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"containerd did not come up: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def ctr_command(self, *args: str, cni_conf_dir: str = "", cni_bin_dir: str = "") -> list[str]:
        """ctr's command line; with CNI directories, wrapped in its private mount namespace."""
        ctr = ["ctr", "--address", self.socket, "--namespace", NAMESPACE, *args]
        if not cni_conf_dir:
            return ctr
        cache = os.path.join(self.dir, "cni-cache")  # libcni's result cache, not the machine's
        os.makedirs(cache, exist_ok=True)
        for mountpoint in (CNI_CONF_DIR, CNI_BIN_DIR, CNI_CACHE_DIR):
            os.makedirs(mountpoint, exist_ok=True)
        script = (f"mount --bind {shlex.quote(cni_conf_dir)} {CNI_CONF_DIR} && "
                  f"mount --bind {shlex.quote(cni_bin_dir)} {CNI_BIN_DIR} && "
                  f"mount --bind {shlex.quote(cache)} {CNI_CACHE_DIR} && exec "
                  + " ".join(shlex.quote(a) for a in ctr))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def ctr(self, *args: str, cni_conf_dir: str = "", cni_bin_dir: str = "",
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ctr_command(*args, cni_conf_dir=cni_conf_dir,
                                               cni_bin_dir=cni_bin_dir),
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        if self._proc is None:
            return
        for task in self.ctr("tasks", "ls", "-q").stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task)
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None
