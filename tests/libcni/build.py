"""Build and run tests/libcni/driver.go: CNI configuration lists executed by libcni itself.

The driver is built against Debian's libcni (golang-github-appc-cni-dev, GOPATH mode, no
network access), so a test sees exactly what a runtime linking libcni 1.1.2 would do.

    why_not_buildable()       None, or why the driver cannot be built here (for pytest.skip)
    build_driver(outdir)      go build into outdir (its build cache too); returns the binary
    write_conflist(dir, ...)  a conflist as a file, the way libcni reads it
    run_driver(binary, ...)   one operation; returns a DriverOutcome (exit code, parsed stdout)

Shared by the pytest fixture `libcni_driver` (tests/overlay_fixtures.py) and bench/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOPATH = "/usr/share/gocode"
LIBCNI_SRC = f"{GOPATH}/src/github.com/containernetworking/cni"
DRIVER_SRC = Path(__file__).with_name("driver.go")
REFERENCE_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def why_not_buildable() -> str | None:
    if shutil.which("go") is None:
        return "the libcni driver needs `go` (apt: golang-go)"
    if not os.path.isdir(os.path.join(LIBCNI_SRC, "libcni")):
        return f"the libcni driver needs libcni's source in {LIBCNI_SRC} (apt: golang-github-appc-cni-dev)"
    return None


def build_driver(outdir: str, timeout: float = 300) -> str:
    """`go build` the driver into `outdir`, with the build cache in `outdir` too."""
    reason = why_not_buildable()
    if reason:
        raise RuntimeError(reason)
    binary = os.path.join(outdir, "libcni-driver")
    gocache = os.path.join(outdir, "gocache")
    os.makedirs(gocache, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOME": outdir, "GOPATH": GOPATH,
           "GO111MODULE": "off", "GOCACHE": gocache, "GOFLAGS": "", "CGO_ENABLED": "0",
           "GOTMPDIR": outdir}
    proc = subprocess.run(["go", "build", "-o", binary, str(DRIVER_SRC)], env=env, cwd=outdir,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"go build of {DRIVER_SRC} failed:\n{proc.stdout}{proc.stderr}")
    return binary


def write_conflist(directory: str | Path, conflist: dict[str, Any], name: str = "net.conflist") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        json.dump(conflist, fh, indent=2)
    return path


@dataclass(frozen=True)
class DriverOutcome:
    returncode: int
    stdout: str
    stderr: str
    ms: float | None  # the libcni call alone (exec of the plugins included), if measured

    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def error(self) -> dict[str, Any]:
        """The failure as the driver reports it: error, and code/msg/details for CNI errors."""
        body = self.json()
        return body if isinstance(body, dict) and "error" in body else {}

    def __str__(self) -> str:
        return f"exit {self.returncode}; stdout: {self.stdout.strip()}; stderr: {self.stderr.strip()}"


def run_driver(binary: str, conflist: str, op: str, *, cni_path: Sequence[str], cache: str,
               netns: str = "", container_id: str = "c1", ifname: str = "eth0",
               cap_args: dict[str, Any] | None = None, cni_args: str = "",
               valid_attachments: list[dict[str, str]] | None = None,
               in_netns: str | None = None, path_env: str = DEFAULT_PATH, timing: bool = False,
               timeout: float = 150, prefix: Sequence[str] = ()) -> DriverOutcome:
    """Run `driver <conflist> <op>` (optionally inside the named netns, as a runtime would run
    in a host's namespace) with a clean environment: plugins inherit it through libcni.
    `prefix` goes before all of it (overlay.lab.hostmounts: a lab host's mount namespace)."""
    env = {"PATH": path_env, "CNI_PATH_DIRS": ":".join(cni_path), "CACHE": cache,
           "NETNS": netns, "CID": container_id, "IFN": ifname}
    if cap_args is not None:
        env["CAP_ARGS"] = json.dumps(cap_args)
    if cni_args:
        env["CNI_ARGS_PAIRS"] = cni_args
    if valid_attachments is not None:
        env["VALID_ATTACHMENTS"] = json.dumps(valid_attachments)
    if timing:
        env["TIMING"] = "1"
    cmd = [binary, conflist, op]
    if in_netns:
        cmd = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", in_netns, *cmd]
    proc = subprocess.run([*prefix, *cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)
    ms = None
    stderr_lines = []
    for line in proc.stderr.splitlines():
        if timing and line.startswith('{"ms":'):
            ms = float(json.loads(line)["ms"])
        else:
            stderr_lines.append(line)
    return DriverOutcome(proc.returncode, proc.stdout, "\n".join(stderr_lines), ms)


@dataclass(frozen=True)
class Libcni:
    """The driver bound to what stays the same across calls: plugin dirs, cache, namespace."""

    binary: str
    cni_path: Sequence[str]
    cache: str
    in_netns: str | None = None
    path_env: str = DEFAULT_PATH
    prefix: Sequence[str] = ()

    def __call__(self, conflist: str, op: str, **kwargs: Any) -> DriverOutcome:
        kwargs.setdefault("in_netns", self.in_netns)
        kwargs.setdefault("prefix", self.prefix)
        kwargs.setdefault("path_env", self.path_env)
        return run_driver(self.binary, conflist, op, cni_path=self.cni_path, cache=self.cache,
                          **kwargs)

    def cache_file(self, network: str, container_id: str, ifname: str = "eth0") -> str:
        """Where libcni keeps an attachment's final ADD result (removed by a successful DEL)."""
        return os.path.join(self.cache, "results", f"{network}-{container_id}-{ifname}")
