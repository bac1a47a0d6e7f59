"""A Docker daemon per lab host: `python -m overlay.lab docker up|down|HOST ARGS...`.

Each host's dockerd runs in the host's network namespace (nsenter --net: `ip netns exec`
would remount /sys, the cgroup mounts would vanish and dockerd would fail with "Devices cgroup
isn't mounted") and in a mount namespace of its own, where the host's `docker/plugins`
directory is /run/docker/plugins: the directory in which every dockerd looks for plugins holds
that host's agent's socket, ovs.sock. Everything else of the daemon (data root, exec root,
pidfile, API socket, its containerd) lives under the host's directory, so the daemons of
several hosts and labs coexist, and `down` removes all of it.

No registry is reachable: each daemon gets the image `overlay-busybox` by `docker import` of
a root holding Debian's busybox-static (sh, ping, ip, sleep, nc, httpd, wget ...).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from overlay.lab import host as steps
from overlay.lab.topology import Lab, LabHost

DOCKER = "/usr/bin/docker"     # Debian's client, the daemon's version (20.10); not /usr/local
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"       # busybox-static: no libraries to copy
IMAGE = "overlay-busybox"
PLUGINS = "/run/docker/plugins"  # where dockerd discovers plugins
APPLETS = ("sh", "ping", "ip", "sleep", "true", "cat", "nc", "httpd", "wget", "echo", "ls",
           "hostname", "ifconfig", "route", "ps", "kill", "mkdir", "uname")
_MOUNT = 'mount --bind "$1" ' + PLUGINS + ' && shift && exec "$@"'


def available() -> str | None:
    """Why Docker cannot run here, or None."""
    for path, package in ((DOCKERD, "docker.io"), (DOCKER, "docker.io"),
                          (BUSYBOX, "busybox-static")):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install {package})"
    return None


def home(h: LabHost) -> str:
    return os.path.join(h.dir, "docker")


def api_socket(h: LabHost) -> str:
    return os.path.join(home(h), "docker.sock")


def plugin_socket(h: LabHost) -> str:
    return os.path.join(home(h), "plugins", "ovs.sock")


def _pidfile(h: LabHost) -> str:
    return os.path.join(home(h), "dockerd.pid")


def client(h: LabHost, *args: str) -> list[str]:
    return [DOCKER, "-H", "unix://" + api_socket(h), *args]


def docker(h: LabHost, *args: str, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(client(h, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DOCKER_API_VERSION": "1.41"})
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} on {h.name} failed: {proc.stderr.strip()}")
    return proc


def _daemon_command(h: LabHost) -> list[str]:
    d = home(h)
    with open(os.path.join(d, "daemon.json"), "w") as fh:
        fh.write("{}\n")  # not the machine's /etc/docker/daemon.json
    return ["nsenter", f"--net=/var/run/netns/{h.netns}", "unshare", "--mount",
            "--propagation", "slave", "/bin/sh", "-c", _MOUNT, "docker-mounts",
            os.path.join(d, "plugins"), DOCKERD, "--config-file", os.path.join(d, "daemon.json"),
            "--storage-driver", "vfs", "--bridge", "none", "--iptables=false",
            "--ip-masq=false", "--userland-proxy=false", "--data-root", os.path.join(d, "data"),
            "--exec-root", os.path.join(d, "exec"), "--pidfile", os.path.join(d, "docker.pid"),
            "-H", "unix://" + api_socket(h), "--exec-opt", "native.cgroupdriver=cgroupfs"]


def _answers(h: LabHost) -> bool:
    try:
        return docker(h, "version", timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:  # busy restoring its containers after a crash
        return False


def start_daemon(h: LabHost) -> None:
    os.makedirs(os.path.join(home(h), "plugins"), exist_ok=True)
    os.makedirs(PLUGINS, exist_ok=True)  # the mount point (empty on the machine itself)
    log = os.path.join(home(h), "dockerd.log")
    steps.spawn(_daemon_command(h), netns=None, log=log, pidfile=_pidfile(h))
    steps.wait_for(lambda: _answers(h), f"dockerd of {h.name}", timeout=90, log=log)


def stop_daemon(h: LabHost) -> None:
    """SIGTERM: dockerd stops its containers (through the driver) and exits."""
    steps.stop_pidfile(_pidfile(h), timeout=30.0)


def _stray_shims(h: LabHost) -> list[int]:
    """containerd shims of this host's daemon still running (a daemon that died left them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and \
                any(a.startswith(home(h).encode() + b"/") for a in argv):
            found.append(int(pid))
    return found


def _kill_tree(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        children = []
    for child in children:
        _kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def load_image(h: LabHost) -> None:
    if docker(h, "image", "inspect", IMAGE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for applet in APPLETS:
            os.symlink("busybox", os.path.join(root, "bin", applet))
        for sub in ("etc", "tmp", "proc", "sys", "dev", "www"):
            os.makedirs(os.path.join(root, sub))
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True)
        proc = subprocess.run(client(h, "import", "-c", "ENV PATH=/bin", "-", IMAGE),
                              input=tar.stdout, capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"docker import on {h.name}: {proc.stderr.decode().strip()}")


def enable_plugin(lab: Lab, h: LabHost) -> None:
    """The host's agent serves the plugin (docker_plugin_socket) and asks this daemon."""
    with open(h.agent_config) as fh:
        config = fh.read()
    if "docker_plugin_socket" not in config:
        with open(h.agent_config, "a") as fh:
            fh.write(f'docker_plugin_socket = "{plugin_socket(h)}"\n'
                     f'docker_host = "{api_socket(h)}"\n')
        lab.stop_agent(h)
        lab.start_agent(h)
    steps.wait_for(lambda: os.path.exists(plugin_socket(h)), f"{h.name}'s docker plugin socket")


def up(lab: Lab) -> None:
    reason = available()
    if reason:
        raise RuntimeError(reason)
    for h in lab.hosts:
        enable_plugin(lab, h)
        if docker(h, "version", timeout=10, check=False).returncode != 0:
            start_daemon(h)
        load_image(h)


def down(lab: Lab) -> None:
    for h in lab.hosts:
        if os.path.exists(_pidfile(h)):
            # Containers first, so that the driver removes their endpoints while it still can.
            ids = docker(h, "ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                docker(h, "rm", "-f", *ids, check=False)
            stop_daemon(h)
        for shim in _stray_shims(h):  # and their containers
            _kill_tree(shim)
        # vfs layers and the exec root's mounts are under here (the mounts went with the
        # daemon's mount namespace).
        shutil.rmtree(home(h), ignore_errors=True)
