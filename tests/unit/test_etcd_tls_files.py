"""TLS towards etcd without etcd: certificate files checked, handshakes classified.

Certificates come from overlay.lab.pki (the openssl command); the handshake tests run a TLS
server of the standard library's own on 127.0.0.1, nowhere else.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.agent.config import load
from overlay.lab import host as steps
from overlay.lab import pki
from overlay.store import tls
from overlay.store.tls import TlsConfigError, TlsFiles, Verdict

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (apt)")


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        made = pki.lab_pki(str(root / "good"), ["127.0.0.1"])
        self.ca, self.server, self.client = made.ca, made.server, made.client
        self.other_ca = pki.make_ca(str(root / "other"), "ca", "some other CA")
        self.other_client = pki.issue(str(root / "other"), "client", self.other_ca, "stranger",
                                      client=True)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    @property
    def good(self) -> TlsFiles:
        return TlsFiles(self.ca.cert, self.client.cert, self.client.key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def refusal(files: TlsFiles) -> str:
    with pytest.raises(TlsConfigError) as err:
        tls.check_files(files)
    return str(err.value)


# --- files ------------------------------------------------------------------------------------


def test_no_tls_checks_nothing() -> None:
    tls.check_files(TlsFiles())
    assert not TlsFiles().enabled


def test_good_files_pass(certs: Pki) -> None:
    tls.check_files(certs.good)
    tls.check_files(TlsFiles(certs.ca.cert))  # server authentication only


def test_missing_and_unreadable_files_are_named_with_the_os_error(certs: Pki) -> None:
    missing = str(certs.root / "nope" / "client.crt")
    assert refusal(TlsFiles(certs.ca.cert, missing, certs.client.key)) == (
        f"cannot read etcd_cert {missing}: No such file or directory (ENOENT)")
    assert refusal(TlsFiles(str(certs.root), certs.client.cert, certs.client.key)) == (
        f"cannot read etcd_ca {certs.root}: Is a directory (EISDIR)")
    empty = certs.file("empty.key", "")
    assert refusal(TlsFiles(certs.ca.cert, certs.client.cert, empty)) == f"etcd_key {empty} is empty"


def test_cert_and_key_go_together_and_need_a_ca(certs: Pki) -> None:
    assert "etcd_cert is set but etcd_key is not" in refusal(TlsFiles(certs.ca.cert, certs.client.cert))
    assert "etcd_key is set but etcd_cert is not" in refusal(TlsFiles(certs.ca.cert, key=certs.client.key))
    assert "etcd_ca is not" in refusal(TlsFiles("", certs.client.cert, certs.client.key))


def test_garbage_is_not_pem(certs: Pki) -> None:
    garbage = certs.file("garbage.pem", os.urandom(300).hex())
    assert refusal(TlsFiles(certs.ca.cert, garbage, certs.client.key)) == (
        f"etcd_cert {garbage} is not a PEM certificate: no '-----BEGIN CERTIFICATE-----' line")
    assert refusal(TlsFiles(garbage, certs.client.cert, certs.client.key)).startswith(
        f"etcd_ca {garbage} is not a PEM certificate")
    assert refusal(TlsFiles(certs.ca.cert, certs.client.cert, garbage)) == (
        f"etcd_key {garbage} is not a PEM private key: no '-----BEGIN PRIVATE KEY-----' line")


def test_a_broken_certificate_block_does_not_parse(certs: Pki) -> None:
    broken = certs.file("broken.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                                      "-----END CERTIFICATE-----\n")
    assert f"etcd_cert {broken} holds a certificate block that does not parse" in refusal(
        TlsFiles(certs.ca.cert, broken, certs.client.key))


def test_swapped_cert_and_key_are_pointed_out(certs: Pki) -> None:
    message = refusal(TlsFiles(certs.ca.cert, certs.client.key, certs.client.cert))
    assert message == (f"etcd_cert {certs.client.key} is not a PEM certificate: no "
                       "'-----BEGIN CERTIFICATE-----' line (it holds a private key)")


def test_a_key_of_another_certificate_is_refused(certs: Pki) -> None:
    assert refusal(TlsFiles(certs.ca.cert, certs.client.cert, certs.other_client.key)) == (
        f"etcd_key {certs.other_client.key} is not the private key of etcd_cert "
        f"{certs.client.cert} (key values mismatch)")


def test_an_encrypted_key_is_refused(certs: Pki) -> None:
    encrypted = str(certs.root / "encrypted.key")
    subprocess.run(["openssl", "pkey", "-in", certs.client.key, "-aes256", "-passout", "pass:x",
                    "-out", encrypted], check=True, capture_output=True)
    assert "is encrypted with a passphrase" in refusal(TlsFiles(certs.ca.cert, certs.client.cert,
                                                                encrypted))


def test_the_ca_file_must_hold_a_ca(certs: Pki) -> None:
    assert refusal(TlsFiles(certs.client.cert, certs.client.cert, certs.client.key)) == (
        f"etcd_ca {certs.client.cert} holds no CA certificate (only end-entity ones): it must be "
        "the CA that signed etcd's server certificate")


def test_a_der_ca_gets_a_hint(certs: Pki) -> None:
    der = str(certs.root / "ca.der")
    subprocess.run(["openssl", "x509", "-in", certs.ca.cert, "-outform", "der", "-out", der],
                   check=True, capture_output=True)
    assert "it looks like DER, not PEM" in refusal(TlsFiles(der, certs.client.cert, certs.client.key))


def test_a_key_others_can_read_is_only_a_warning(certs: Pki, caplog: pytest.LogCaptureFixture) -> None:
    loose = str(certs.root / "loose.key")
    shutil.copy(certs.client.key, loose)
    os.chmod(loose, 0o644)
    with caplog.at_level(logging.WARNING):
        tls.check_files(TlsFiles(certs.ca.cert, certs.client.cert, loose))
    assert "can be read by other users (mode 644)" in caplog.text


def test_endpoint_schemes_must_agree_with_tls() -> None:
    on = TlsFiles("/ca.crt")
    tls.check_endpoints(on, ["https://10.0.0.1:2379", "10.0.0.2:2379"])
    tls.check_endpoints(TlsFiles(), ["http://10.0.0.1:2379", "10.0.0.2:2379"])
    with pytest.raises(TlsConfigError, match="write https://10.0.0.1:2379"):
        tls.check_endpoints(on, ["http://10.0.0.1:2379"])
    with pytest.raises(TlsConfigError, match="says https:// but etcd_ca is not set"):
        tls.check_endpoints(TlsFiles(), ["https://10.0.0.1:2379"])


def test_alert_names() -> None:
    assert tls.alert_name("SSLV3_ALERT_BAD_CERTIFICATE") == "bad certificate"
    assert tls.alert_name("TLSV13_ALERT_CERTIFICATE_REQUIRED") == "certificate required"
    assert tls.alert_name("TLSV1_ALERT_UNKNOWN_CA") == "unknown ca"
    assert tls.alert_name("CERTIFICATE_VERIFY_FAILED") is None
    assert tls.alert_name(None) is None


def test_agent_flags_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('etcd_ca = "/p/ca.crt"\netcd_cert = "/p/c.crt"\n')
    cfg = load(["--config", str(conf), "--etcd-key", "/p/c.key"])
    assert cfg.etcd_tls == TlsFiles("/p/ca.crt", "/p/c.crt", "/p/c.key")
    assert load([]).etcd_tls == TlsFiles() and not load([]).etcd_tls.enabled


# --- lab pieces -------------------------------------------------------------------------------


def test_etcd_command_with_tls_requires_client_certificates() -> None:
    command = steps.etcd_command("lab", "/d", "172.31.0.254",
                                 tls=steps.EtcdServerTls("/p/etcd.crt", "/p/etcd.key", "/p/ca.crt"))
    assert command == [
        "etcd", "--name", "lab", "--data-dir", "/d",
        "--listen-client-urls", "https://172.31.0.254:2379,https://127.0.0.1:2379",
        "--advertise-client-urls", "https://172.31.0.254:2379",
        "--listen-peer-urls", "http://127.0.0.1:2380",
        "--cert-file", "/p/etcd.crt", "--key-file", "/p/etcd.key", "--client-cert-auth",
        "--trusted-ca-file", "/p/ca.crt"]
    assert steps.etcd_command("lab", "/d", "172.31.0.254", tls=None) == steps.etcd_command(
        "lab", "/d", "172.31.0.254")


def test_lab_certificates(certs: Pki) -> None:
    text = subprocess.run(["openssl", "x509", "-in", certs.server.cert, "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in text and "TLS Web Server Authentication" in text
    text = subprocess.run(["openssl", "x509", "-in", certs.client.cert, "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert "TLS Web Client Authentication" in text
    subprocess.run(["openssl", "verify", "-CAfile", certs.ca.cert, certs.server.cert,
                    certs.client.cert], check=True, capture_output=True)
    assert os.stat(certs.client.key).st_mode & 0o777 == 0o600
    again = pki.lab_pki(os.path.dirname(certs.ca.cert), ["127.0.0.1"])  # kept, not remade
    assert again.client.cert == certs.client.cert
    with open(certs.client.cert) as fh, open(again.client.cert) as fh2:
        assert fh.read() == fh2.read()


# --- the handshake probe against a TLS server on loopback --------------------------------------


class LoopbackTls:
    """A TLS server on 127.0.0.1 that requires a client certificate signed by `client_ca`, and
    answers one line, the way etcd's /version does."""

    def __init__(self, server: pki.CertKey, client_ca: str, tls_on: bool = True) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(server.cert, server.key)
        self.ctx.load_verify_locations(cafile=client_ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.tls_on = tls_on
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if not self.tls_on:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    continue
                with self.ctx.wrap_socket(conn, server_side=True) as tconn:
                    tconn.recv(1024)
                    tconn.sendall(b"HTTP/1.1 200 OK\r\n\r\n{}")
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(certs: Pki) -> Iterator[LoopbackTls]:
    srv = LoopbackTls(certs.server, certs.ca.cert)
    yield srv
    srv.close()


def test_probe_accepts_the_right_certificate(certs: Pki, server: LoopbackTls) -> None:
    result = tls.probe(certs.good, "127.0.0.1", server.port, 3)
    assert result.verdict is Verdict.OK, result.detail
    assert tls.rejection(certs.good, [("127.0.0.1", server.port)], 3) is None


def test_probe_names_a_client_certificate_the_server_refuses(certs: Pki, server: LoopbackTls) -> None:
    stranger = TlsFiles(certs.ca.cert, certs.other_client.cert, certs.other_client.key)
    result = tls.probe(stranger, "127.0.0.1", server.port, 3)
    assert result.verdict is Verdict.REJECTED
    assert result.detail.startswith(f"etcd at https://127.0.0.1:{server.port} rejected our client "
                                    f"certificate etcd_cert {certs.other_client.cert} (TLS alert: ")
    reason = tls.rejection(stranger, [("127.0.0.1", server.port)], 3)
    assert reason is not None and "rejected our client certificate" in reason


def test_probe_names_a_server_our_ca_does_not_vouch_for(certs: Pki, server: LoopbackTls) -> None:
    wrong_ca = TlsFiles(certs.other_ca.cert, certs.client.cert, certs.client.key)
    result = tls.probe(wrong_ca, "127.0.0.1", server.port, 3)
    assert result.verdict is Verdict.REJECTED
    assert result.detail.startswith(f"etcd's server certificate at https://127.0.0.1:{server.port} "
                                    f"is not accepted with etcd_ca {certs.other_ca.cert}: ")
    assert "etcd_ca must be the CA that signed etcd's --cert-file" in result.detail


def test_probe_without_client_certificate(certs: Pki, server: LoopbackTls) -> None:
    result = tls.probe(TlsFiles(certs.ca.cert), "127.0.0.1", server.port, 3)
    assert result.verdict is Verdict.REJECTED
    assert "it wants a client certificate (--client-cert-auth)" in result.detail


def test_probe_of_a_closed_port_is_only_unreachable(certs: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    result = tls.probe(certs.good, "127.0.0.1", port, 3)
    assert result.verdict is Verdict.UNREACHABLE and "Connection refused" in result.detail
    assert tls.rejection(certs.good, [("127.0.0.1", port)], 3) is None


def test_probe_of_a_plain_server(certs: Pki) -> None:
    plain = LoopbackTls(certs.server, certs.ca.cert, tls_on=False)
    try:
        result = tls.probe(certs.good, "127.0.0.1", plain.port, 3)
    finally:
        plain.close()
    assert result.verdict is Verdict.REJECTED and "does not speak TLS" in result.detail


def test_one_accepting_endpoint_is_enough(certs: Pki, server: LoopbackTls) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        closed = sock.getsockname()[1]
    assert tls.rejection(certs.good, [("127.0.0.1", closed), ("127.0.0.1", server.port)], 3) is None
