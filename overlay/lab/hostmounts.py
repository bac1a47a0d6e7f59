"""Each lab host's own /run/overlay and /run/cni, as every real host has its own.

A real host has one agent, at the plugin's default socket /run/overlay/agent.sock, and one
`dhcp` IPAM daemon, at /run/cni/dhcp.sock. The lab's hosts share one machine and one file
system, so a command "on host N" (its agent, its dhcp daemon, a runtime calling the `ovs`
plugin there) runs in a mount namespace of its own where host N's directory is mounted at
/run/overlay and host N's `cni-run` directory at /run/cni. A netconf without `agentSocket`
then reaches host N's agent, and a `dhcp` plugin started by that agent reaches host N's
daemon, with nothing lab-specific in either.

Propagation is `slave`: network namespaces the lab adds later (containers, /run/netns/...)
still appear inside, while the two bind mounts stay invisible outside. One namespace per
process rather than one persistent namespace per host: nothing to unmount at `down`, and a
process that dies takes its namespace along.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

DEFAULT_RUN_DIR = "/run/overlay"  # the plugin's default agentSocket is in here
CNI_RUN_DIR = "/run/cni"          # the dhcp daemon's socket, dhcp.sock
_SCRIPT = ('mount --bind "$1" ' + DEFAULT_RUN_DIR + ' && mount --bind "$2" ' + CNI_RUN_DIR
           + ' && shift 2 && exec "$@"')


def cni_run_dir(host_dir: str) -> str:
    """What /run/cni is for the host whose directory is `host_dir`."""
    return os.path.join(host_dir, "cni-run")


def in_host_mounts(host_dir: str, cmd: Sequence[str]) -> list[str]:
    """`cmd` in a new mount namespace with host_dir at /run/overlay and its cni-run at /run/cni.

    An empty `cmd` gives a prefix to put before a command line. The mount points are made on
    the machine if missing (empty directories; nothing is mounted on them outside).
    """
    for directory in (DEFAULT_RUN_DIR, CNI_RUN_DIR, cni_run_dir(host_dir)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [unshare, "--mount", "--propagation", "slave", "/bin/sh", "-c", _SCRIPT,
            "host-mounts", host_dir, cni_run_dir(host_dir), *cmd]
