"""etcd's users and roles for a lab, and `auth enable`: who may touch which keys.

etcd checks permissions by key range. With --client-cert-auth and authentication enabled it
takes the user of each request from the common name (CN) of the client's certificate, so a
certificate is an identity, and a role bounds what it can do:

    role overlay-host      readwrite on the prefix /overlay/v1/ except policies/, which it may
                           only read; nothing else. Every host's user (CN = host name) has it:
                           the agent reads the whole tree (it programs flows from other hosts'
                           records and from the policies), writes its host record, endpoints
                           and allocations, and grants and revokes its own lease.
    role overlay-operator  readwrite on the whole prefix, for overlayctl (user overlay-operator):
                           it reads the tree (hosts, endpoints, doctor, trace), records
                           networks and writes the network policies.
    user root              etcd's admin (users, roles, auth enable/disable, compaction and the
                           other maintenance calls). Only the lab's own set-up presents it.

A host's role cannot yet be tighter than that: see docs/etcd-auth.md for what a per-host role
could restrict, and what the key layout would need for it.

Each function takes `etcdctl`: runs etcdctl with root's certificate and the given arguments.
Everything converges: run it again and nothing changes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

from overlay.lab.pki import OPERATOR_USER
from overlay.store import records
from overlay.store.policies import POLICIES

HOST_ROLE = "overlay-host"
OPERATOR_ROLE = "overlay-operator"
PREFIX = records.ROOT  # /overlay/v1/
Etcdctl = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _checked(etcdctl: Etcdctl, *args: str) -> str:
    proc = etcdctl(args)
    if proc.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ensure_role(etcdctl: Etcdctl, role: str, prefix: str = PREFIX) -> None:
    """`role` with readwrite on `prefix`, and no other permission."""
    if etcdctl(["role", "get", role]).returncode != 0:
        _checked(etcdctl, "role", "add", role)
    _checked(etcdctl, "role", "grant-permission", "--prefix=true", role, "readwrite", prefix)


def _range_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's prefix range end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# A host may not write policies: they decide what every host lets through, and a host that
# could write them could open any endpoint of the cluster to itself. etcd's permissions only
# ever add up (there is no "deny"), so the host's readwrite is granted as two ranges around
# policies/, and policies/ itself read-only; a key prefix added later stays writable.
HOST_GRANTS = (("readwrite", PREFIX, POLICIES), ("read", POLICIES, _range_end(POLICIES)),
               ("readwrite", _range_end(POLICIES), _range_end(PREFIX)))


def ensure_host_role(etcdctl: Etcdctl) -> None:
    """HOST_ROLE with HOST_GRANTS; a role of before (readwrite on all of PREFIX) loses that
    grant only after the ranges that replace it are in place, so an agent is never refused."""
    if etcdctl(["role", "get", HOST_ROLE]).returncode != 0:
        _checked(etcdctl, "role", "add", HOST_ROLE)
    for permission, start, end in HOST_GRANTS:
        _checked(etcdctl, "role", "grant-permission", HOST_ROLE, permission, start, end)
    # Absent (a new role, or run again): etcdctl says so and fails; that is the state we want.
    etcdctl(["role", "revoke-permission", "--prefix=true", HOST_ROLE, PREFIX])


def ensure_user(etcdctl: Etcdctl, user: str, role: str) -> None:
    """`user`, authenticated by certificate only (no password), holding `role`."""
    if etcdctl(["user", "get", user]).returncode != 0:
        _checked(etcdctl, "user", "add", "--no-password", user)
    _checked(etcdctl, "user", "grant-role", user, role)


def enable(etcdctl: Etcdctl, hosts: Sequence[str] = ()) -> None:
    """The roles, root's and the operator's users, the users of `hosts` (known in advance, as
    in the Vagrant lab: made before, so no agent ever sees a missing user), then
    authentication: from here on a certificate whose CN names no user can do nothing, and a
    host's only what its role allows."""
    ensure_host_role(etcdctl)
    ensure_role(etcdctl, OPERATOR_ROLE)
    if etcdctl(["role", "get", "root"]).returncode != 0:
        _checked(etcdctl, "role", "add", "root")
    ensure_user(etcdctl, "root", "root")
    ensure_user(etcdctl, OPERATOR_USER, OPERATOR_ROLE)
    for host in hosts:
        add_host(etcdctl, host)
    _checked(etcdctl, "auth", "enable")


def add_host(etcdctl: Etcdctl, host: str) -> None:
    """Host `host`'s etcd user (its certificate's CN), with the host role."""
    if host in ("root", OPERATOR_USER):
        raise ValueError(f"a host cannot be named {host!r}: that etcd user is not a host's")
    ensure_user(etcdctl, host, HOST_ROLE)
