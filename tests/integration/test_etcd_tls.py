"""etcd over TLS with client-certificate authentication, end to end, and an agent that refuses to
start with certificates that cannot work, saying why."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab import pki
from overlay.lab.shell import in_netns, run
from overlay.lab.topology import Lab

AGENT = os.path.join(steps.scripts_dir(), "overlay-agent")
OVERLAYCTL = os.path.join(steps.scripts_dir(), "overlayctl")


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2, tls=True)
    for name, host in (("s0", "host0"), ("s1", "host1")):
        out = ctr.add_container(lab, name, host)  # the real plugin, as a runtime runs it
        assert out.returncode == 0, out.stdout + out.stderr
    ctr.wait_converged(lab)
    return lab


@pytest.fixture(scope="module")
def stranger(lab: Lab) -> pki.LabPki:
    """A CA etcd does not trust, and a client certificate it signed."""
    directory = os.path.join(lab.workdir, "stranger")
    ca = pki.make_ca(directory, "ca", "not the lab's CA")
    client = pki.issue(directory, "client", ca, "overlay-agent", client=True)
    return pki.LabPki(ca=ca, server=client, client=client, root=client)


def test_etcd_and_the_agents_use_tls(lab: Lab) -> None:
    with open(os.path.join(lab.etcd_dir, "etcd.pid")) as fh:
        with open(f"/proc/{fh.read().strip()}/cmdline") as cmd:
            etcd = cmd.read().split("\0")
    assert "--client-cert-auth" in etcd and lab.pki.ca.cert in etcd
    assert f"https://{lab.etcd_ip}:2379,https://127.0.0.1:2379" in etcd
    with open(lab.hosts[0].agent_config) as fh:
        config = fh.read()
    assert f'etcd_endpoints = ["https://{lab.etcd_ip}:2379"]' in config
    assert f'etcd_cert = "{lab.pki.host("host0").cert}"' in config  # its own certificate


def test_containers_on_two_hosts_ping_each_other(lab: Lab) -> None:
    for src, dst in (("s0", "s1"), ("s1", "s0")):
        outcome = ctr.ping(lab.containers[src]["netns"], lab.containers[dst]["ip"])
        assert outcome.ok, outcome.summary


def test_overlayctl_lists_both_endpoints_over_tls(lab: Lab) -> None:
    out = run([OVERLAYCTL, *lab.overlayctl_etcd_args(), "--json", "endpoints"],
              netns=lab.underlay_ns).stdout
    assert sorted((e["container_id"], e["host"]) for e in json.loads(out)) == [
        (lab.containers["s0"]["container_id"], "host0"),
        (lab.containers["s1"]["container_id"], "host1")]
    hosts = json.loads(run([OVERLAYCTL, *lab.overlayctl_etcd_args(), "--json", "hosts"],
                           netns=lab.underlay_ns).stdout)
    assert [(h["host"], h["alive"]) for h in hosts] == [("host0", True), ("host1", True)]


def test_overlayctl_without_a_client_certificate_is_told_why(lab: Lab) -> None:
    proc = run([OVERLAYCTL, "--etcd-ca", lab.pki.ca.cert, "endpoints"], netns=lab.underlay_ns,
               check=False)
    assert proc.returncode == 1
    # (gRPC's own log lines, "E... Corruption detected" and the like, may come before it)
    assert proc.stderr.strip().splitlines()[-1] == (
        "overlayctl: etcd refuses our TLS: etcd at https://127.0.0.1:2379 refused the TLS "
        "connection (TLS alert: bad certificate): it wants a client certificate "
        "(--client-cert-auth); set etcd_cert and etcd_key")


def etcdctl(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["etcdctl", "--dial-timeout=2s", "--command-timeout=3s", *args, "get", "--prefix",
                "--keys-only", "/overlay/v1/endpoints/"], netns=lab.underlay_ns, check=False)


def test_etcd_refuses_clients_without_an_accepted_certificate(lab: Lab,
                                                              stranger: pki.LabPki) -> None:
    https = ["--endpoints", f"https://{lab.etcd_ip}:2379"]
    no_cert = etcdctl(lab, *https, "--cacert", lab.pki.ca.cert)
    assert no_cert.returncode != 0 and "/overlay/" not in no_cert.stdout
    foreign = etcdctl(lab, *https, "--cacert", lab.pki.ca.cert, "--cert", stranger.client.cert,
                      "--key", stranger.client.key)
    assert foreign.returncode != 0 and "/overlay/" not in foreign.stdout
    plain = etcdctl(lab, "--endpoints", f"http://{lab.etcd_ip}:2379")
    assert plain.returncode != 0 and "/overlay/" not in plain.stdout
    good = run([*lab.etcdctl("get", "--prefix", "--keys-only", "/overlay/v1/endpoints/",
                             url=f"https://{lab.etcd_ip}:2379")], netns=lab.underlay_ns)
    assert good.stdout.count("/overlay/v1/endpoints/my-net/") == 2


# --- an agent with certificates that cannot work --------------------------------------------


def garbage(lab: Lab) -> str:
    path = os.path.join(lab.workdir, "garbage.pem")
    with open(path, "w") as fh:
        fh.write(os.urandom(200).hex() + "\n")
    return path


def run_bad_agent(lab: Lab, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """host0's configuration with `flags` on top, its own socket, and an OVSDB that does not
    exist: an agent that gets past the TLS checks fails on OVS with another message."""
    h = lab.hosts[0]
    cmd = [AGENT, "--config", h.agent_config, "--socket", os.path.join(lab.workdir, "bad.sock"),
           "--ovsdb", f"unix:{lab.workdir}/no-such-ovsdb.sock", *flags]
    proc = subprocess.run(in_netns(h.netns, cmd), capture_output=True, text=True, timeout=timeout)
    assert not os.path.exists(os.path.join(lab.workdir, "bad.sock"))
    return proc


CASES = ["unreadable cert", "cert of another CA", "garbage cert", "garbage key", "key of another cert",
         "wrong CA", "http endpoint"]


@pytest.mark.parametrize("case", CASES)
def test_agent_refuses_to_start(lab: Lab, stranger: pki.LabPki, case: str) -> None:
    ours = lab.pki
    where = f"https://{lab.etcd_ip}:2379"
    missing = os.path.join(lab.workdir, "no-such-dir", "client.crt")
    flags, expected = {
        "unreadable cert": (
            ["--etcd-cert", missing],
            f"cannot read etcd_cert {missing}: No such file or directory (ENOENT)"),
        "cert of another CA": (
            ["--etcd-cert", stranger.client.cert, "--etcd-key", stranger.client.key],
            f"etcd at {where} rejected our client certificate etcd_cert {stranger.client.cert} "
            "(TLS alert: bad certificate): etcd accepts only certificates signed by a CA in its "
            "--trusted-ca-file, not expired, and made for client authentication"),
        "garbage cert": (
            ["--etcd-cert", garbage(lab)],
            f"etcd_cert {garbage(lab)} is not a PEM certificate: no '-----BEGIN CERTIFICATE-----' "
            "line"),
        "garbage key": (
            ["--etcd-key", garbage(lab)],
            f"etcd_key {garbage(lab)} is not a PEM private key: no '-----BEGIN PRIVATE KEY-----' "
            "line"),
        "key of another cert": (
            ["--etcd-key", stranger.client.key],
            f"etcd_key {stranger.client.key} is not the private key of etcd_cert "
            f"{ours.host('host0').cert} (key values mismatch)"),
        "wrong CA": (
            ["--etcd-ca", stranger.ca.cert],
            f"etcd's server certificate at {where} is not accepted with etcd_ca {stranger.ca.cert}: "
            "unable to get local issuer certificate (etcd_ca must be the CA that signed etcd's "
            "--cert-file, whose subjectAltName must include the address we use)"),
        "http endpoint": (
            ["--etcd-endpoints", f"http://{lab.etcd_ip}:2379"],
            f"etcd endpoint http://{lab.etcd_ip}:2379 says http:// but etcd_ca/etcd_cert/etcd_key "
            f"are set: write https://{lab.etcd_ip}:2379"),
    }[case]
    proc = run_bad_agent(lab, *flags)
    print(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    errors = [line.split(" ERROR overlay.agent: ", 1)[1] for line in proc.stderr.splitlines()
              if " ERROR overlay.agent: " in line]
    assert errors == [f"refusing to start: {expected}"]
    assert "OVS" not in proc.stderr  # refused before it touched OVS


@pytest.fixture
def lone_lab(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    yield lab_factory(hosts=1, network=None, tls=True)


def wait_for_text(path: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, errors="replace") as fh:
            content = fh.read()
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{content}")


def test_agent_keeps_retrying_an_unreachable_etcd_but_gives_up_when_it_refuses_our_certificate(
        lone_lab: Lab, stranger: pki.LabPki) -> None:
    lab = lone_lab
    h = lab.hosts[0]
    lab.stop_agent(h)
    lab.stop_etcd()
    log = os.path.join(lab.workdir, "bad-agent.log")
    sock = os.path.join(lab.workdir, "bad.sock")
    with open(log, "w") as out:
        agent = subprocess.Popen(in_netns(h.netns, [
            AGENT, "--config", h.agent_config, "--socket", sock,
            "--etcd-cert", stranger.client.cert, "--etcd-key", stranger.client.key]),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        text = wait_for_text(log, "cannot register with etcd yet", 30)
        assert "TLS to etcd not checked yet, etcd is not reachable" in text
        assert agent.poll() is None  # unreachable: it keeps trying
        lab.start_etcd()
        assert agent.wait(timeout=30) == 1
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    with open(log) as fh:
        text = fh.read()
    assert (f"ERROR overlay.agent: refusing to start: etcd at https://{lab.etcd_ip}:2379 rejected "
            f"our client certificate etcd_cert {stranger.client.cert} (TLS alert: bad "
            "certificate)") in text
    assert not os.path.exists(sock)
    lab.start_agent(h)  # the lab's own certificate still works
    hosts = json.loads(run([OVERLAYCTL, *lab.overlayctl_etcd_args(), "--json", "hosts"],
                           netns=lab.underlay_ns).stdout)
    assert [(x["host"], x["alive"]) for x in hosts] == [("host0", True)]


def test_a_certificate_naming_no_etcd_user_is_told_so(lab: Lab) -> None:
    # Signed by the lab's CA, so TLS accepts it, but no etcd user has its CN: a host whose user
    # was never made. Both overlayctl and the agent say what is wrong instead of a gRPC dump.
    pair = pki.issue(os.path.join(lab.workdir, "nobody"), "nobody", lab.pki.ca, "nobody",
                     client=True)
    proc = run([OVERLAYCTL, "--etcd-ca", lab.pki.ca.cert, "--etcd-cert", pair.cert,
                "--etcd-key", pair.key, "hosts"], netns=lab.underlay_ns, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "overlayctl: etcd refused the request: etcdserver: permission denied: etcd's "
        f"authentication is on, and the etcd user named by the CN of our client certificate "
        f"(etcd_cert {pair.cert}) does not exist or has no role that allows this on /overlay/v1/ "
        "(`etcdctl user get <CN>` as etcd's root; docs/etcd-auth.md)")
    h = lab.hosts[1]
    lab.stop_agent(h)  # host1's agent, restarted with the wrong certificate
    log = os.path.join(lab.workdir, "nobody-agent.log")
    with open(log, "w") as out:
        agent = subprocess.Popen(in_netns(h.netns, [
            AGENT, "--config", h.agent_config, "--socket", os.path.join(lab.workdir, "nobody.sock"),
            "--etcd-cert", pair.cert, "--etcd-key", pair.key]), stdout=out, stderr=subprocess.STDOUT)
    try:
        text = wait_for_text(log, "cannot register with etcd yet", 60)
        assert "does not exist or has no role that allows this on /overlay/v1/" in text, text
    finally:
        agent.kill()
        agent.wait()
        lab.start_agent(h)
