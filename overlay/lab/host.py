"""The per-host steps, shared by the netns lab and the Vagrant VMs.

    etcd_command(...)        etcd's command line: clients on one address and loopback (with
                             EtcdServerTls: https only, client certificates required)
    start_ovs(dir, netns)    own ovsdb-server and ovs-vswitchd, with every file under `dir`
    write_agent_config(...)  the agent's TOML
    start_agent(...)         overlay-agent in the background, waits for its socket
    write_cni_config(...)    a conflist for the host's runtime (the `ovs` plugin first)
    install_plugin(dir)      the `ovs` plugin where a runtime's CNI_PATH looks for it

Several OVS instances can share a machine because each gets its own database, sockets, pid
files and OVS_RUNDIR (where bridge .mgmt sockets live, which ovs-ofctl needs). The VMs use
the system's OVS instead and run etcd and the agent as systemd units (overlay.lab.vm).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Any

from overlay.install import plugin as plugins
from overlay.lab.hostmounts import in_host_mounts
from overlay.lab.shell import in_netns, run
from overlay_plugin_ovs import launcher

VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
ETCD_PORT = 2379


def scripts_dir() -> str:
    """Where this Python environment's console scripts (overlay-agent, ovs) live."""
    here = os.path.dirname(sys.executable)
    return here if os.path.exists(os.path.join(here, "overlay-agent")) else sysconfig.get_path("scripts")


@dataclass(frozen=True)
class OvsPaths:
    dir: str

    @property
    def db(self) -> str:
        return os.path.join(self.dir, "conf.db")

    @property
    def sock(self) -> str:
        return os.path.join(self.dir, "db.sock")

    @property
    def endpoint(self) -> str:
        return "unix:" + self.sock


def spawn(cmd: list[str], *, netns: str | None, log: str, pidfile: str,
          env: dict[str, str] | None = None, host_dir: str | None = None) -> int:
    """Start a long-running process in its own session (it outlives the lab command); with
    `host_dir`, in that lab host's mount namespace (overlay.lab.hostmounts)."""
    argv = in_netns(netns, cmd)
    if host_dir is not None:
        argv = in_host_mounts(host_dir, argv)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    with open(pidfile, "w") as fh:
        fh.write(str(proc.pid))
    return proc.pid


def stop_pidfile(pidfile: str, timeout: float = 5.0) -> None:
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            try:  # reap it if it is our child; otherwise just wait for it to vanish
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.unlink(pidfile)
    except OSError:
        pass


def wait_for(predicate: Any, what: str, timeout: float = 20.0, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as fh:
            tail = "\n" + "".join(fh.readlines()[-20:])
    raise RuntimeError(f"timed out waiting for {what}{tail}")


@dataclass(frozen=True)
class EtcdServerTls:
    """etcd's side of TLS: its certificate (naming every address it serves) and the client CA."""
    cert_file: str
    key_file: str
    trusted_ca_file: str


def etcd_command(name: str, data_dir: str, ip: str, port: int = ETCD_PORT,
                 tls: EtcdServerTls | None = None) -> list[str]:
    """A single-member etcd serving clients on `ip` and on loopback; its peer port stays local.

    With `tls`, clients must speak https and present a certificate signed by trusted_ca_file.
    """
    scheme = "https" if tls else "http"
    url = f"{scheme}://{ip}:{port}"
    command = ["etcd", "--name", name, "--data-dir", data_dir,
               "--listen-client-urls", f"{url},{scheme}://127.0.0.1:{port}",
               "--advertise-client-urls", url, "--listen-peer-urls", "http://127.0.0.1:2380"]
    if tls:
        command += ["--cert-file", tls.cert_file, "--key-file", tls.key_file,
                    "--client-cert-auth", "--trusted-ca-file", tls.trusted_ca_file]
    return command


def etcd_member_command(name: str, data_dir: str, ip: str, members: dict[str, str],
                        port: int = ETCD_PORT) -> list[str]:
    """One member of a plain-http etcd cluster whose members (name -> IP) all use `port`."""
    peers = ",".join(f"{n}=http://{addr}:{port + 1}" for n, addr in members.items())
    return ["etcd", "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", f"http://{ip}:{port}",
            "--advertise-client-urls", f"http://{ip}:{port}",
            "--listen-peer-urls", f"http://{ip}:{port + 1}",
            "--initial-advertise-peer-urls", f"http://{ip}:{port + 1}",
            "--initial-cluster", peers, "--initial-cluster-token", "overlay-lab",
            "--initial-cluster-state", "new"]


def accepts(path: str) -> bool:
    """Whether a unix socket at `path` accepts a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def start_ovs(directory: str, netns: str | None) -> OvsPaths:
    """Start ovsdb-server and ovs-vswitchd whose every file lives under `directory`."""
    paths = OvsPaths(directory)
    os.makedirs(directory, exist_ok=True)
    env = {"OVS_RUNDIR": directory, "OVS_LOGDIR": directory, "OVS_DBDIR": directory}
    if not os.path.exists(paths.db):
        run(["ovsdb-tool", "create", paths.db, VSWITCH_SCHEMA])
    spawn(["ovsdb-server", paths.db, f"--remote=punix:{paths.sock}",
           f"--unixctl={directory}/ovsdb-server.ctl", f"--log-file={directory}/ovsdb-server.log"],
          netns=None, log=f"{directory}/ovsdb-server.out", pidfile=f"{directory}/ovsdb-server.pid",
          env=env)
    # The socket file appears at bind(), before listen(): a client in between is refused (seen
    # under load), so wait until a connection is accepted, not until the file exists.
    wait_for(lambda: accepts(paths.sock), "ovsdb-server to accept on its socket",
             log=f"{directory}/ovsdb-server.log")
    run(["ovs-vsctl", f"--db={paths.endpoint}", "--no-wait", "init"])
    start_vswitchd(directory, netns)
    return paths


def start_vswitchd(directory: str, netns: str | None) -> None:
    """ovs-vswitchd alone (also to bring it back after a test stopped it)."""
    paths = OvsPaths(directory)
    env = {"OVS_RUNDIR": directory, "OVS_LOGDIR": directory, "OVS_DBDIR": directory}
    ctl = f"{directory}/ovs-vswitchd.ctl"
    if os.path.exists(ctl):
        os.unlink(ctl)  # left by one that was killed; its reappearance says the new one is up
    # ovs-vswitchd runs inside the host's namespace: the netdev datapath opens interfaces there.
    spawn(["ovs-vswitchd", paths.endpoint, f"--unixctl={ctl}",
           f"--log-file={directory}/ovs-vswitchd.log"],
          netns=netns, log=f"{directory}/ovs-vswitchd.out",
          pidfile=f"{directory}/ovs-vswitchd.pid", env=env)
    wait_for(lambda: os.path.exists(ctl), "ovs-vswitchd")


def stop_ovs(directory: str) -> None:
    stop_pidfile(f"{directory}/ovs-vswitchd.pid")
    stop_pidfile(f"{directory}/ovsdb-server.pid")


def write_agent_config(path: str, **values: Any) -> None:
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def _wait_previous_agent(pidfile: str, timeout: float) -> None:
    """An agent told to stop (SIGTERM) finishes the CNI calls in flight first (up to 5 s)
    and holds its metrics port until then: a new one started meanwhile would fail to bind."""
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"overlay-agent" not in fh.read():
                    return  # the pid belongs to someone else now
        except OSError:
            return  # gone
        time.sleep(0.05)


def start_agent(config: str, *, netns: str | None, log: str, pidfile: str, socket: str,
                timeout: float = 30.0, host_dir: str | None = None) -> int:
    agent = os.path.join(scripts_dir(), "overlay-agent")
    _wait_previous_agent(pidfile, timeout)
    if os.path.exists(socket):
        os.unlink(socket)  # left by an agent that was killed: its presence must mean "ready"
    pid = spawn([agent, "--config", config], netns=netns, log=log, pidfile=pidfile,
                host_dir=host_dir)

    def ready() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise RuntimeError(f"overlay-agent exited; see {log}") from None
        return os.path.exists(socket)
    wait_for(ready, f"overlay-agent socket {socket}", timeout, log)
    return pid


def write_cni_config(path: str, *, network: str, vni: int, subnet: str, bridge: str,
                     agent_socket: str, cni_version: str = "1.0.0") -> dict[str, Any]:
    conflist = {
        "cniVersion": cni_version, "name": network,
        "plugins": [{"type": "ovs", "bridge": bridge, "vxlanID": vni,
                     "agentSocket": agent_socket,
                     "ipam": {"type": "overlay", "subnet": subnet}}],
    }
    with open(path, "w") as fh:
        json.dump(conflist, fh, indent=2)
    return conflist


def install_plugin(cni_bin: str) -> str:
    """What a runtime's CNI_PATH holds: an executable named after the netconf's "type". The
    compiled plugin when `make deps` built it into this environment, else the Python plugin's
    launcher for this environment's Python, as overlay.install writes them; OVERLAY_PLUGIN=python
    asks for the launcher (tests and benchmarks of the Python form)."""
    os.makedirs(cni_bin, exist_ok=True)
    path = os.path.join(cni_bin, "ovs")
    binary = plugins.compiled(os.path.dirname(scripts_dir()))
    if binary and os.environ.get(plugins.FORM_ENV) != "python":
        content = binary.read_bytes()
    else:
        content = launcher.script(os.path.join(scripts_dir(), "python3")).encode()
    if os.path.islink(path) or not os.path.exists(path) or open(path, "rb").read() != content:
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    return path
