"""Certificates for a lab's etcd, made with the openssl command-line tool (Debian: openssl).

    make_ca(dir, name, cn)            a self-signed CA: <name>.crt and <name>.key
    issue(dir, name, ca, cn, ...)     a certificate signed by `ca`: for a server (its IP
                                      addresses as subjectAltNames) or for a client
    lab_pki(dir, etcd_ips)            what a TLS lab uses: ca, etcd (server), client (the
                                      operator's: overlayctl), root (etcd's admin, for the lab's
                                      own user and role set-up); files already there are kept
    host_cert(dir, ca, host)          one host's client certificate, CN = the host's etcd user

With etcd's authentication on (overlay.lab.etcdauth), etcd takes the user of a request from the
common name of the client certificate: the CN *is* the identity, so each host gets its own.

Keys are EC P-256, unencrypted, mode 0600; certificates are valid for ten years. Lab and test
code only: a real deployment brings its own PKI.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.lab.shell import run

DAYS = "3650"
OPERATOR_USER = "overlay-operator"  # the CN of the operator's certificate, its etcd user


@dataclass(frozen=True)
class CertKey:
    cert: str
    key: str

    def exists(self) -> bool:
        return os.path.exists(self.cert) and os.path.exists(self.key)


@dataclass(frozen=True)
class LabPki:
    ca: CertKey
    server: CertKey  # etcd's
    client: CertKey  # the operator's (overlayctl), etcd user OPERATOR_USER
    root: CertKey    # etcd's root user: users, roles, `auth enable`; the lab itself only

    def host(self, name: str) -> CertKey:
        """Where host_cert puts host `name`'s certificate (made or not)."""
        directory = os.path.join(os.path.dirname(self.ca.cert), "hosts")
        return CertKey(os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key"))


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise RuntimeError("TLS in the lab needs the openssl command (apt install openssl)")
    return found


def _new_key(path: str) -> None:
    # Created 0600 before openssl writes into it, so the key is never readable by others.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)
    run([_openssl(), "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", path])
    os.chmod(path, 0o600)


def make_ca(directory: str, name: str = "ca", cn: str = "overlay lab CA") -> CertKey:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pair = CertKey(os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key"))
    _new_key(pair.key)
    run([_openssl(), "req", "-x509", "-new", "-key", pair.key, "-subj", f"/CN={cn}", "-days", DAYS,
         "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", pair.cert])
    return pair


def extensions(*, ips: Sequence[str] = (), dns: Sequence[str] = (), client: bool = False) -> str:
    """The X.509v3 extensions of a server (addresses as subjectAltName) or client certificate."""
    lines = ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature",
             f"extendedKeyUsage = {'clientAuth' if client else 'serverAuth'}",
             "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
    names = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
    if names:
        lines.append("subjectAltName = " + ",".join(names))
    return "\n".join(lines) + "\n"


def issue(directory: str, name: str, ca: CertKey, cn: str, *, ips: Sequence[str] = (),
          dns: Sequence[str] = (), client: bool = False) -> CertKey:
    """<name>.crt and <name>.key in `directory`, signed by `ca`."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    pair = CertKey(os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key"))
    csr, ext = os.path.join(directory, f"{name}.csr"), os.path.join(directory, f"{name}.ext")
    _new_key(pair.key)
    with open(ext, "w") as fh:
        fh.write(extensions(ips=ips, dns=dns, client=client))
    try:
        run([_openssl(), "req", "-new", "-key", pair.key, "-subj", f"/CN={cn}", "-out", csr])
        run([_openssl(), "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", "0x" + secrets.token_hex(12), "-days", DAYS, "-sha256",
             "-extfile", ext, "-out", pair.cert])
    finally:
        for path in (csr, ext):
            if os.path.exists(path):
                os.unlink(path)
    return pair


def lab_pki_paths(directory: str) -> LabPki:
    """Where lab_pki puts its files (whether they exist yet or not)."""
    def pair(name: str) -> CertKey:
        return CertKey(os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key"))
    return LabPki(ca=pair("ca"), server=pair("etcd"), client=pair("client"), root=pair("root"))


def lab_pki(directory: str, etcd_ips: Sequence[str]) -> LabPki:
    """The lab's CA, etcd's server certificate for `etcd_ips`, the operator's and root's client
    certificates. Hosts get theirs from host_cert, as they are added."""
    paths = lab_pki_paths(directory)
    ca = paths.ca if paths.ca.exists() else make_ca(directory, "ca", "overlay lab CA")
    if not paths.server.exists():
        issue(directory, "etcd", ca, "etcd", ips=etcd_ips, dns=["localhost"])
    if not paths.client.exists():
        issue(directory, "client", ca, OPERATOR_USER, client=True)
    if not paths.root.exists():
        issue(directory, "root", ca, "root", client=True)
    return paths


def host_cert(directory: str, ca: CertKey, host: str) -> CertKey:
    """Host `host`'s client certificate in <directory>/hosts (kept if there): CN = `host`."""
    pair = lab_pki_paths(directory).host(host)
    if not pair.exists():
        issue(os.path.dirname(pair.cert), host, ca, host, client=True)
    return pair
