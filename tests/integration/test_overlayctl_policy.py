"""overlayctl policy against a real etcd (TLS lab: the operator's certificate): apply from JSON
and YAML, list, show, delete; refusals that name the field and write nothing; and the hosts'
etcd role, which may read policies but not write them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay.store.tls import TlsFiles

WEB = {"name": "web", "priority": 10, "endpointSelector": {"matchLabels": {"app": "web"}},
       "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": 80}], "log": True}]}
YAML = """\
kind: NetworkPolicy
metadata: {name: db, network: my-net}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: In, values: [db, cache]}]
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{endpointSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
  egress:
  - to: [{ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}}]
    action: drop
---
name: deny-all
network: other-net
endpointSelector: {}
"""


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def ctl(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
                "policy", *args], netns=lab.underlay_ns, check=False,
               input=stdin.encode() if stdin is not None else None)


def policy_keys(lab: Lab) -> dict[str, str]:
    out = run(lab.etcdctl("get", "--prefix", "/overlay/v1/policies/"), netns=lab.underlay_ns).stdout
    lines = out.splitlines()
    return dict(zip(lines[::2], lines[1::2], strict=True))


@pytest.fixture
def clean(lab: Lab) -> None:
    run(lab.etcdctl("del", "--prefix", "/overlay/v1/policies/"), netns=lab.underlay_ns)


def test_apply_json_then_yaml_list_show_delete(lab: Lab, tmp_path: Path, clean: None) -> None:
    path = tmp_path / "web.json"
    path.write_text(json.dumps(WEB))
    first = ctl(lab, "apply", "-f", str(path), "--network", "my-net")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "policy my-net/web created"
    again = ctl(lab, "apply", "-f", str(path), "--network", "my-net")
    assert again.stdout.strip() == "policy my-net/web unchanged"
    stored = json.loads(policy_keys(lab)["/overlay/v1/policies/my-net/web"])
    assert stored["endpointSelector"] == {"matchLabels": {"app": "web"}}
    assert stored["policyTypes"] == ["Ingress"] and stored["priority"] == 10

    yaml_file = tmp_path / "more.yaml"
    yaml_file.write_text(YAML)
    applied = ctl(lab, "apply", "-f", str(yaml_file))  # each document names its network
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "policy my-net/db created",
        "policy other-net/deny-all created (network other-net has no record yet: it applies "
        "once the network exists)"]

    listed = ctl(lab, "list").stdout.splitlines()
    assert listed[0].split() == ["NETWORK", "NAME", "PRIORITY", "SELECTOR", "INGRESS", "EGRESS"]
    assert [line.split() for line in listed[1:]] == [
        ["my-net", "db", "1000", "app", "in", "(cache,db)", "1", "1"],
        ["my-net", "web", "10", "app=web", "1", "-"],
        ["other-net", "deny-all", "1000", "all", "0", "-"]]
    as_json = json.loads(ctl(lab, "list", "--network", "my-net", "--json").stdout)
    assert [p["name"] for p in as_json] == ["db", "web"]

    shown = ctl(lab, "show", "db").stdout.splitlines()
    assert shown == ["policy my-net/db  priority 1000", "selects: app in (cache,db)",
                     "ingress: (first match decides; no match: drop)",
                     "  [0] allow from endpoints app=web on TCP/5432",
                     "egress: (first match decides; no match: drop)",
                     "  [0] drop to 10.9.0.0/16 except 10.9.1.0/24 port any protocol"]
    assert json.loads(ctl(lab, "show", "web", "--json").stdout) == stored

    changed = ctl(lab, "apply", "-f", "-", "--network", "my-net",
                  stdin=json.dumps({**WEB, "priority": 11}))
    assert changed.stdout.strip() == "policy my-net/web configured"

    deleted = ctl(lab, "delete", "web")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "policy my-net/web deleted"
    assert set(policy_keys(lab)) == {"/overlay/v1/policies/my-net/db",
                                     "/overlay/v1/policies/other-net/deny-all"}


@pytest.mark.parametrize(("text", "network", "words"), [
    (json.dumps({**WEB, "ingress": [{"ports": [{"port": 80}, {"port": 70000}]}]}), "my-net",
     "policy 1 (web): ingress[0].ports[1].port: must be 1-65535, got 70000"),
    (json.dumps([{"name": "fine", "endpointSelector": {}}, {**WEB, "priority": -1}]), "my-net",
     "policy 2 (web): priority: must be 0-65535, got -1"),
    (json.dumps(WEB), None, "policy 1 (web): network: required"),
    (json.dumps({**WEB, "network": "red"}), "my-net", "network: the document names 'red'"),
    (json.dumps([WEB, WEB]), "my-net", "policy 2: my-net/web is policy 1 too"),
    ("name: x\nendpointSelector: {matchLabels: {app: yes}}\n", "my-net",
     "endpointSelector.matchLabels.app: a label value must be a string, got bool"),
    ("{not json: [", "my-net", "neither JSON nor YAML"),
    ("", "my-net", "holds no policy"),
])
def test_a_refused_file_writes_nothing(lab: Lab, tmp_path: Path, clean: None, text: str,
                                       network: str | None, words: str) -> None:
    path = tmp_path / "bad"
    path.write_text(text)
    out = ctl(lab, "apply", "-f", str(path), *(["--network", network] if network else []))
    assert out.returncode == 1 and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert policy_keys(lab) == {}


def test_missing_and_ambiguous_names_are_errors(lab: Lab, tmp_path: Path, clean: None) -> None:
    assert "no policy nope" in ctl(lab, "delete", "nope").stderr
    path = tmp_path / "two.json"
    path.write_text(json.dumps([{**WEB, "network": "my-net"}, {**WEB, "network": "other-net"}]))
    assert ctl(lab, "apply", "-f", str(path)).returncode == 0
    out = ctl(lab, "show", "web")
    assert out.returncode == 1
    assert "policy web exists in networks my-net, other-net: add --network" in out.stderr
    assert ctl(lab, "delete", "web", "--network", "other-net").returncode == 0
    assert list(policy_keys(lab)) == ["/overlay/v1/policies/my-net/web"]


def test_an_invalid_record_in_etcd_is_reported_not_fatal(lab: Lab, clean: None) -> None:
    run(lab.etcdctl("put", "/overlay/v1/policies/my-net/forged",
                    json.dumps({"name": "other", "network": "my-net", "endpointSelector": {}})),
        netns=lab.underlay_ns)
    out = ctl(lab, "list")
    assert out.returncode == 1
    assert "ignoring invalid policy record /overlay/v1/policies/my-net/forged: name: the " \
           "record says my-net/other" in out.stderr
    assert "is not a valid policy record" in ctl(lab, "show", "forged").stderr


def etcdctl_as(lab: Lab, files: TlsFiles, *args: str) -> subprocess.CompletedProcess[str]:
    return run(lab.etcdctl("--dial-timeout=3s", "--command-timeout=5s", *args, as_=files),
               netns=lab.underlay_ns, check=False)


def test_a_host_reads_policies_but_cannot_write_them(lab: Lab, tmp_path: Path,
                                                     clean: None) -> None:
    if not lab.tls:
        pytest.skip("a plain-http lab has no etcd users (OVERLAY_TEST_TLS=0)")
    path = tmp_path / "web.json"
    path.write_text(json.dumps(WEB))
    assert ctl(lab, "apply", "-f", str(path), "--network", "my-net").returncode == 0
    host0 = lab.host_tls("host0")
    key = "/overlay/v1/policies/my-net/web"
    for attempt in (("put", key, "{}"), ("del", key), ("put", "/overlay/v1/policies/x/y", "{}"),
                    ("del", "--prefix", "/overlay/v1/policies/"), ("del", "--prefix", "/overlay/v1/")):
        refused = etcdctl_as(lab, host0, *attempt)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, (attempt, refused)
    assert list(policy_keys(lab)) == [key]
    read = etcdctl_as(lab, host0, "get", "--prefix", "/overlay/v1/", "--keys-only")
    assert read.returncode == 0 and key in read.stdout.split()
    # Around policies/ the host still writes, also under a prefix that does not exist yet.
    for probe in ("/overlay/v1/endpoints/probe", "/overlay/v1/zzz-later"):
        assert etcdctl_as(lab, host0, "put", probe, "1").returncode == 0
        assert etcdctl_as(lab, host0, "del", probe).returncode == 0
