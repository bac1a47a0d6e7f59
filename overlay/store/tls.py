"""TLS towards etcd: certificate files checked before use, and a handshake probe that tells
"etcd cannot be reached" (keep retrying) from "etcd and we disagree over TLS" (give up, say why).

    TlsFiles(ca, cert, key)      the three paths; all empty means plain HTTP
    check_files(files)           readable, PEM, a CA in `ca`, `key` belongs to `cert`
    check_endpoints(files, urls) https:// with TLS, http:// without
    probe(files, host, port, t)  one TLS handshake + GET /version: OK, UNREACHABLE or REJECTED
    rejection(files, addrs, t)   why etcd refuses us (seen twice), or None
    check_before_start(...)      all of the above, as the agent runs it before touching OVS

gRPC reports a refused client certificate as "Unwrap failed (TSI_DATA_CORRUPTED)" and a
refused connection as "failed to connect": both are UNAVAILABLE, which pyetcd turns into the
same ConnectionFailedError. The probe uses the standard library's ssl module instead, which
names the TLS alert etcd sent ("bad certificate") or the verification error of etcd's own
certificate ("unable to get local issuer certificate").
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
_KEY_BEGIN = re.compile(r"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?)PRIVATE KEY-----")
_ALERT = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)$")
# Handshakes that end without a TLS alert: the other side does not speak TLS on that port.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "HTTP_REQUEST",
            "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
RECHECK_DELAY = 0.5  # seconds between the two probes that must both see a rejection
START_PROBE_TIMEOUT = 2.0
QUIET_WAIT = 1.0  # seconds to wait for an alert after a handshake, sending nothing


class TlsError(Exception):
    """Base of the two ways TLS towards etcd can make the agent refuse to start."""


class TlsConfigError(TlsError):
    """The configured files cannot be used: unreadable, not PEM, key not the cert's, ..."""


class TlsRejected(TlsError):
    """etcd answers, but the TLS handshake with it fails: retrying will not help."""


@dataclass(frozen=True)
class TlsFiles:
    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    def ssl_context(self) -> ssl.SSLContext:
        """What the probe uses: etcd's certificate must chain to `ca` and name the address."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key, password=_no_password)
        return ctx

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for pyetcd's secure Endpoint."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read("etcd_ca", self.ca),
            private_key=_read("etcd_key", self.key) if self.key else None,
            certificate_chain=_read("etcd_cert", self.cert) if self.cert else None)


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    raise _Encrypted()


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        raise TlsConfigError(f"cannot read {name} {path}: {exc.strerror or exc}"
                             + (f" ({code})" if code else "")) from None
    if not data.strip():
        raise TlsConfigError(f"{name} {path} is empty")
    return data


def _what_else(text: str) -> str:
    """A hint at what a file that is not what we wanted holds instead."""
    if _KEY_BEGIN.search(text):
        return " (it holds a private key)"
    if CERT_BEGIN in text:
        return " (it holds a certificate)"
    if text.startswith("0") and "\ufffd" in text[:8]:  # an ASN.1 SEQUENCE: DER, not PEM
        return " (it looks like DER, not PEM: convert it with openssl's `-inform der`)"
    if "-----BEGIN " in text:
        return f" (it holds a {text.split('-----BEGIN ', 1)[1].split('-----', 1)[0]} block)"
    return ""


def alert_name(reason: str | None) -> str | None:
    """The TLS alert in an OpenSSL reason code: SSLV3_ALERT_BAD_CERTIFICATE -> bad certificate."""
    match = _ALERT.match(reason or "")
    return match.group(1).lower().replace("_", " ") if match else None


def check_pem_certificates(name: str, path: str, text: str) -> ssl.SSLContext:
    """The file's certificates, loaded as trust anchors (which parses each of them)."""
    if CERT_BEGIN not in text:
        raise TlsConfigError(f"{name} {path} is not a PEM certificate: no '{CERT_BEGIN}' line"
                             + _what_else(text))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"{name} {path} holds a certificate block that does not parse "
                             f"({exc.reason or exc})") from None
    return ctx


def check_pem_key(name: str, path: str, text: str) -> None:
    found = _KEY_BEGIN.search(text)
    if found is None:
        hint = _what_else(text)
        if CERT_BEGIN in text:
            hint += "; are etcd_cert and etcd_key swapped?"
        raise TlsConfigError(f"{name} {path} is not a PEM private key: no "
                             f"'-----BEGIN PRIVATE KEY-----' line{hint}")
    if found.group(1) == "ENCRYPTED " or "Proc-Type: 4,ENCRYPTED" in text:
        raise TlsConfigError(_encrypted(name, path))


def _encrypted(name: str, path: str) -> str:
    return (f"{name} {path} is encrypted with a passphrase, which the agent cannot ask for: "
            f"store it unencrypted (`openssl pkey -in {path} -out NEW`) and readable by root only")


def _expired(not_after: str) -> bool:
    return ssl.cert_time_to_seconds(not_after) < time.time()


def check_files(files: TlsFiles) -> None:
    """Everything that can be checked without etcd: raises TlsConfigError saying what is wrong."""
    if not files.enabled:
        return
    if bool(files.cert) != bool(files.key):
        have, missing = ("etcd_cert", "etcd_key") if files.cert else ("etcd_key", "etcd_cert")
        raise TlsConfigError(f"{have} is set but {missing} is not: a client certificate needs its "
                             "private key and the other way round")
    if not files.ca:
        raise TlsConfigError("etcd_cert/etcd_key are set but etcd_ca is not: TLS to etcd needs the "
                             "CA certificate that signed etcd's server certificate")
    ca_text = _read("etcd_ca", files.ca).decode("ascii", errors="replace")
    cert_text = _read("etcd_cert", files.cert).decode("ascii", errors="replace") if files.cert else ""
    key_text = _read("etcd_key", files.key).decode("ascii", errors="replace") if files.key else ""

    anchors = check_pem_certificates("etcd_ca", files.ca, ca_text)
    if anchors.cert_store_stats()["x509_ca"] == 0:
        raise TlsConfigError(f"etcd_ca {files.ca} holds no CA certificate (only end-entity ones): "
                             "it must be the CA that signed etcd's server certificate")
    cas = anchors.get_ca_certs()
    if cas and all(_expired(str(c["notAfter"])) for c in cas):
        raise TlsConfigError(f"etcd_ca {files.ca}: its CA certificate expired on "
                             f"{cas[0]['notAfter']}")
    if not files.cert:
        return
    check_pem_certificates("etcd_cert", files.cert, cert_text)
    check_pem_key("etcd_key", files.key, key_text)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(files.cert, files.key, password=_no_password)
    except _Encrypted:
        raise TlsConfigError(_encrypted("etcd_key", files.key)) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"etcd_key {files.key} is not the private key of etcd_cert "
                                 f"{files.cert} (key values mismatch)") from None
        raise TlsConfigError(f"etcd_key {files.key} does not parse as a private key for etcd_cert "
                             f"{files.cert} ({exc.reason or exc})") from None
    except OSError as exc:  # gone since we read it
        raise TlsConfigError(f"cannot read etcd_cert {files.cert} or etcd_key {files.key}: "
                             f"{exc.strerror or exc}") from None
    mode = os.stat(files.key).st_mode
    if mode & 0o077:
        log.warning("etcd_key %s can be read by other users (mode %03o): chmod 600 it",
                    files.key, mode & 0o777)


def check_endpoints(files: TlsFiles, endpoints: Sequence[str]) -> None:
    """With TLS every endpoint must say https://; without it none may."""
    for url in endpoints:
        scheme = urlparse(url).scheme if "://" in url else ""
        if files.enabled and scheme == "http":
            raise TlsConfigError(f"etcd endpoint {url} says http:// but etcd_ca/etcd_cert/etcd_key "
                                 f"are set: write {url.replace('http://', 'https://', 1)}")
        if not files.enabled and scheme == "https":
            raise TlsConfigError(f"etcd endpoint {url} says https:// but etcd_ca is not set (nor "
                                 "etcd_cert/etcd_key, which etcd needs if it checks client "
                                 "certificates)")


class Verdict(enum.Enum):
    OK = "ok"
    UNREACHABLE = "unreachable"  # try again later
    REJECTED = "rejected"        # a TLS disagreement: trying again will not help


@dataclass(frozen=True)
class Probe:
    verdict: Verdict
    detail: str


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _not_tls(where: str, why: str) -> Probe:
    return Probe(Verdict.REJECTED, f"etcd at {where} does not speak TLS ({why}): it serves plain "
                 "http, or something else listens there")


def classify_ssl_error(files: TlsFiles, where: str, exc: ssl.SSLError,
                       handshake: bool = True) -> Probe:
    """What a failed handshake (or the first read after it) means, for the operator."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Probe(Verdict.REJECTED,
                     f"etcd's server certificate at {where} is not accepted with etcd_ca "
                     f"{files.ca}: {exc.verify_message} (etcd_ca must be the CA that signed "
                     "etcd's --cert-file, whose subjectAltName must include the address we use)")
    alert = alert_name(exc.reason)
    if alert is not None:
        if not files.cert:
            return Probe(Verdict.REJECTED,
                         f"etcd at {where} refused the TLS connection (TLS alert: {alert}): "
                         "it wants a client certificate (--client-cert-auth); set etcd_cert and "
                         "etcd_key")
        return Probe(Verdict.REJECTED,
                     f"etcd at {where} rejected our client certificate etcd_cert {files.cert} "
                     f"(TLS alert: {alert}): etcd accepts only certificates signed by a CA in its "
                     "--trusted-ca-file, not expired, and made for client authentication")
    if handshake and exc.reason in _NOT_TLS:
        plain = exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG")
        return _not_tls(where, "it answered in plain text" if plain
                        else "it hung up during the TLS handshake")
    return Probe(Verdict.UNREACHABLE, f"TLS with etcd at {where} failed: {exc}")


def probe(files: TlsFiles, host: str, port: int, timeout: float, *, quiet: bool = False) -> Probe:
    """One handshake with our certificate, then GET /version: does etcd accept us?

    A refused client certificate shows only after the handshake (TLS 1.3 sends the alert after
    the client's Finished), so a request is sent and its answer read. A server that closes the
    connection with our request unread may reset it before we read its alert: then we probe
    once more, `quiet`: handshake, send nothing, and wait for an alert.
    """
    where = "https://" + _netloc(host, port)
    try:
        ctx = files.ssl_context()
    except (OSError, ssl.SSLError, _Encrypted) as exc:
        raise TlsConfigError(f"cannot load etcd_ca/etcd_cert/etcd_key: {exc}") from None
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return Probe(Verdict.UNREACHABLE, f"{where}: {exc.strerror or exc}")
    accepted = Probe(Verdict.OK, f"{where} accepted our TLS client"
                     + (f" certificate {files.cert}" if files.cert else ""))
    with raw:
        try:
            conn = ctx.wrap_socket(raw, server_hostname=host)  # the handshake
        except ssl.SSLError as exc:
            return classify_ssl_error(files, where, exc)
        except (ConnectionResetError, BrokenPipeError):  # a plain server hanging up
            return _not_tls(where, "it reset the connection during the TLS handshake")
        except OSError as exc:  # timed out
            return Probe(Verdict.UNREACHABLE, f"{where}: {exc.strerror or exc}")
        with conn:
            try:
                if quiet:
                    conn.settimeout(min(timeout, QUIET_WAIT))
                else:
                    conn.sendall(f"GET /version HTTP/1.1\r\nHost: {_netloc(host, port)}\r\n"
                                 "Connection: close\r\n\r\n".encode())
                first = conn.recv(64)
            except ssl.SSLError as exc:
                if alert_name(exc.reason) is None and not quiet:
                    return probe(files, host, port, timeout, quiet=True)
                return classify_ssl_error(files, where, exc, handshake=False)
            except TimeoutError:
                # Quiet: no alert for QUIET_WAIT after the handshake, so it took our certificate.
                return accepted if quiet else Probe(Verdict.UNREACHABLE, f"{where}: timed out")
            except OSError as exc:  # reset
                if not quiet:
                    return probe(files, host, port, timeout, quiet=True)
                return Probe(Verdict.UNREACHABLE, f"{where}: {exc.strerror or exc}")
    if not first:
        if not quiet:
            return probe(files, host, port, timeout, quiet=True)
        return Probe(Verdict.UNREACHABLE, f"{where} closed the connection after the TLS handshake")
    return accepted


def _probe_all(files: TlsFiles, addresses: Sequence[tuple[str, int]], timeout: float) -> list[Probe]:
    return [probe(files, host, port, timeout) for host, port in addresses]


def rejection(files: TlsFiles, addresses: Sequence[tuple[str, int]], timeout: float) -> str | None:
    """Why etcd refuses our TLS, when no endpoint accepts it and one refuses it twice running.

    None while some endpoint accepts us, or none answers: then etcd is merely unreachable.
    """
    if not files.enabled:
        return None
    for attempt in range(2):
        probes = _probe_all(files, addresses, timeout)
        refused = [p.detail for p in probes if p.verdict is Verdict.REJECTED]
        if any(p.verdict is Verdict.OK for p in probes) or not refused:
            return None
        if attempt == 0:
            time.sleep(RECHECK_DELAY)  # etcd restarting half-way through a handshake, say
    return "; ".join(refused)


def addresses(endpoints: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for url in endpoints:
        parsed = urlparse(url if "://" in url else "https://" + url)
        out.append((parsed.hostname or "127.0.0.1", parsed.port or 2379))
    return out


def check_before_start(files: TlsFiles, endpoints: Sequence[str], timeout: float) -> None:
    """What the agent runs before it touches OVS; raises TlsError with the operator's message.

    Files and endpoint schemes first (no network); then, with TLS, one handshake with etcd. An etcd that
    cannot be reached yet is no reason to stop (registration keeps trying, and probes again
    when it fails); one that answers and refuses our TLS is.
    """
    check_files(files)
    check_endpoints(files, endpoints)
    if not files.enabled:
        return
    probes = _probe_all(files, addresses(endpoints), min(timeout, START_PROBE_TIMEOUT))
    if any(p.verdict is Verdict.OK for p in probes):
        for p in probes:
            (log.info if p.verdict is Verdict.OK else log.warning)("TLS to etcd: %s", p.detail)
        return
    if any(p.verdict is Verdict.REJECTED for p in probes):
        reason = rejection(files, addresses(endpoints), min(timeout, START_PROBE_TIMEOUT))
        if reason is not None:
            raise TlsRejected(reason)
    log.info("TLS to etcd not checked yet, etcd is not reachable (%s); registration will keep "
             "trying and checks again", "; ".join(p.detail for p in probes))
