"""TLS and etcd users for the Vagrant lab: certificates made on the machine that runs Vagrant,
each VM given only its own.

    make(dir, etcd_ip, hosts)    (on the Vagrant machine) the CA in <dir>, and per VM a folder
                                 <dir>/<host> with what that VM needs: ca.crt, its client
                                 certificate client.crt/.key (CN = the host's name, its etcd
                                 user), and on the etcd VM also etcd.crt/.key and root.crt/.key
    install(upload)              (in a VM, as root) what Vagrant uploaded to UPLOAD_DIR, moved to
                                 PKI_DIR (/etc/overlay/pki, where the agent's example config
                                 looks), root-owned, keys 0600
    client_tls(), root_tls()     the files the agent and overlayctl, or the lab's set-up, present

The CA's key never leaves the Vagrant machine (it stays in <dir>, under vagrant/.vagrant/, which
is neither synced nor in git): no VM can issue a certificate. Each VM receives its own
certificate only (Vagrant's file provisioner, not the synced folder), so a VM cannot speak to
etcd as another host.

    python -m overlay.lab.vm_tls DIR --etcd-ip IP --host NAME [--host NAME ...]

is what the Vagrantfile runs (when a file is missing) before Vagrant reads its file uploads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from overlay.lab import pki
from overlay.store.tls import TlsFiles

PKI_DIR = "/etc/overlay/pki"
UPLOAD_DIR = "/tmp/overlay-pki"  # where the Vagrantfile's file provisioners put them
CLIENT_FILES = ("ca.crt", "client.crt", "client.key")
ETCD_FILES = ("etcd.crt", "etcd.key", "root.crt", "root.key")


def files_for(host: str, etcd_host: str) -> tuple[str, ...]:
    return CLIENT_FILES + (ETCD_FILES if host == etcd_host else ())


def make(directory: str, etcd_ip: str, hosts: Sequence[str], etcd_host: str) -> None:
    """The CA and each host's folder; files already there are kept."""
    made = pki.lab_pki(directory, [etcd_ip, "127.0.0.1"])  # ca, etcd, client (operator), root
    for host in hosts:
        out = os.path.join(directory, host)
        os.makedirs(out, mode=0o700, exist_ok=True)
        own = pki.host_cert(directory, made.ca, host)
        copies = {"ca.crt": made.ca.cert, "client.crt": own.cert, "client.key": own.key}
        if host == etcd_host:
            copies.update({"etcd.crt": made.server.cert, "etcd.key": made.server.key,
                           "root.crt": made.root.cert, "root.key": made.root.key})
        for name, source in copies.items():
            target = os.path.join(out, name)
            if not os.path.exists(target):
                shutil.copyfile(source, target)
                os.chmod(target, 0o600 if name.endswith(".key") else 0o644)


def install(upload: str = UPLOAD_DIR, target: str = PKI_DIR) -> list[str]:
    """Move what was uploaded into `target` (root's, keys 0600); says which files moved. A
    second provisioning run finds nothing new and keeps what is installed."""
    os.makedirs(target, mode=0o755, exist_ok=True)
    moved = []
    if os.path.isdir(upload):
        for name in sorted(os.listdir(upload)):
            src, dst = os.path.join(upload, name), os.path.join(target, name)
            shutil.copyfile(src, dst)
            if os.geteuid() == 0:
                os.chown(dst, 0, 0)
            os.chmod(dst, 0o600 if name.endswith(".key") else 0o644)
            os.unlink(src)
            moved.append(name)
        shutil.rmtree(upload, ignore_errors=True)
    return moved


def client_tls(directory: str = PKI_DIR) -> TlsFiles:
    return TlsFiles(*(os.path.join(directory, n) for n in CLIENT_FILES))


def root_tls(directory: str = PKI_DIR) -> TlsFiles:
    return TlsFiles(os.path.join(directory, "ca.crt"), os.path.join(directory, "root.crt"),
                    os.path.join(directory, "root.key"))


def etcdctl_args(files: TlsFiles) -> list[str]:
    return ["--cacert", files.ca, "--cert", files.cert, "--key", files.key] if files.enabled else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay.lab.vm_tls")
    parser.add_argument("directory")
    parser.add_argument("--etcd-ip", required=True)
    parser.add_argument("--etcd-host", required=True, help="the VM that runs etcd")
    parser.add_argument("--host", action="append", required=True)
    args = parser.parse_args(argv)
    make(args.directory, args.etcd_ip, args.host, args.etcd_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
