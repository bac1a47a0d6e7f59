"""The pod an ADD is for (K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS): parsed in
overlay/cni/pods.py against Kubernetes' name rules (overlay/model.py), recorded in the endpoint
record, checked when another host's record names one (reason "pod"), shown by overlayctl."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overlay.agent import verify
from overlay.cli import overlayctl
from overlay.cni.netconf import CniEnv, parse_netconf
from overlay.cni.pods import NO_POD, Pod, pod_of
from overlay.cni.testing import FakeHost
from overlay.errors import CniError, Code
from overlay.model import dns_label_problem, dns_subdomain_problem
from overlay.netlink import veth
from overlay.store import records as r

# What containerd 1.6's CRI plugin passes for a pod (pkg/cri/server/sandbox_run.go).
CRI_ARGS = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
            "K8S_POD_INFRA_CONTAINER_ID=4f1c;K8S_POD_UID=8b6e-11")


def env(args: str, container_id: str = "c0") -> CniEnv:
    return CniEnv("ADD", container_id, f"/var/run/netns/{container_id}", "eth0", args=args)


def refused(args: str) -> CniError:
    with pytest.raises(CniError) as info:
        pod_of(env(args))
    return info.value


def test_the_cri_plugins_args_name_the_pod() -> None:
    assert pod_of(env(CRI_ARGS)) == Pod("shop", "web-0")


def test_a_runtime_without_kubernetes_names_no_pod() -> None:
    assert pod_of(env("")) is NO_POD
    assert pod_of(env("IgnoreUnknown=1;IP=10.0.0.9")) is NO_POD


def test_a_pod_name_may_be_a_dns_subdomain() -> None:
    assert pod_of(env("IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=web.v2.x-1")) == Pod(
        "a", "web.v2.x-1")


@pytest.mark.parametrize("args", ["IgnoreUnknown=1;K8S_POD_NAMESPACE=shop",
                                  "IgnoreUnknown=1;K8S_POD_NAME=web-0",
                                  "IgnoreUnknown=1;K8S_POD_NAMESPACE=;K8S_POD_NAME=web-0"])
def test_one_key_without_the_other_is_refused(args: str) -> None:
    err = refused(args)
    assert err.code is Code.INVALID_ENV and "without" in err.msg and err.details


@pytest.mark.parametrize(("namespace", "why"), [
    ("Shop", "upper case"), ("-shop", "leading dash"), ("shop-", "trailing dash"),
    ("a.b", "a dot"), ("x" * 64, "64 characters"), ("shop\n", "a newline"),
    ("sh\u00f6p", "not ASCII")])
def test_a_namespace_kubernetes_refuses_is_refused(namespace: str, why: str) -> None:
    err = refused(f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=web-0")
    assert err.code is Code.INVALID_ENV and "K8S_POD_NAMESPACE" in err.msg, why


@pytest.mark.parametrize("name", ["Web", "web..0", ".web", "web_0", "x" * 254, "web 0"])
def test_a_pod_name_kubernetes_refuses_is_refused(name: str) -> None:
    err = refused(f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}")
    assert err.code is Code.INVALID_ENV and "K8S_POD_NAME" in err.msg


def test_pod_keys_without_ignore_unknown_are_refused_as_before() -> None:
    assert refused("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0").code is Code.INVALID_ENV


def test_the_name_rules_at_their_limits() -> None:
    assert dns_label_problem("a" * 63) is None and dns_label_problem("a" * 64)
    assert dns_label_problem("0") is None and dns_label_problem("")
    label = "a" * 63
    assert dns_subdomain_problem(".".join([label] * 4)[:253].rstrip(".")) is None
    assert dns_subdomain_problem("a" * 253) is None and dns_subdomain_problem("a" * 254)
    assert dns_subdomain_problem("")


# --- ADD, on the fakes of overlay/cni/testing.py ----------------------------------------------

CONF = parse_netconf(json.dumps({
    "cniVersion": "1.1.0", "name": "net", "type": "ovs", "bridge": "br-int", "vxlanID": 7,
    "ipam": {"type": "overlay", "subnet": "10.7.0.0/24"}}).encode())


def test_add_records_the_pod() -> None:
    host = FakeHost()
    host.service.add(env(CRI_ARGS), CONF)
    rec = host.endpoints.records[("net", "c0", "eth0")]
    assert (rec.pod_namespace, rec.pod_name) == ("shop", "web-0")
    assert json.loads(rec.to_json())["pod_name"] == "web-0"


def test_add_without_a_pod_records_none() -> None:
    host = FakeHost()
    host.service.add(env(""), CONF)
    rec = host.endpoints.records[("net", "c0", "eth0")]
    assert (rec.pod_namespace, rec.pod_name) == ("", "")


def test_add_with_a_bad_pod_name_makes_nothing() -> None:
    host = FakeHost()
    with pytest.raises(CniError) as info:
        host.service.add(env("IgnoreUnknown=1;K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web-0"), CONF)
    assert info.value.code is Code.INVALID_ENV
    assert not host.endpoints.records and not host.ports.ports_ and not host.flows.local
    assert veth.hostside_name("c0", "eth0") not in host.links.links
    assert not any(host.allocator.held.get("net", {}).values())
    assert "net" not in host.endpoints.networks  # not even the network record


# --- other hosts' records, and overlayctl -----------------------------------------------------

def record(**over: Any) -> dict[str, Any]:
    rec = r.EndpointRecord(network="n", container_id="c", ifname="eth0", host="h1", vni=42,
                           ips=["10.0.0.3/24"], mac="02:00:00:00:00:03", port="ovlx",
                           netns="/x")
    return {**json.loads(rec.to_json()), **over}


KEY = r.endpoint_key("n", "c", "eth0")


def test_a_record_naming_a_valid_pod_or_none_is_believed() -> None:
    for obj in (record(), record(pod_namespace="shop", pod_name="web-0")):
        assert verify.parse_endpoint(KEY, obj, 1).mac == "02:00:00:00:00:03"
    older = record()
    del older["pod_namespace"], older["pod_name"]  # an agent before pods were recorded
    assert verify.parse_endpoint(KEY, older, 1).host == "h1"


@pytest.mark.parametrize("over", [
    {"pod_namespace": "shop"}, {"pod_name": "web-0"},
    {"pod_namespace": "shop", "pod_name": "web-0\x1b[2J"},
    {"pod_namespace": "a" * 64, "pod_name": "web-0"},
    {"pod_namespace": ["shop"], "pod_name": "web-0"},
    {"pod_namespace": "shop", "pod_name": None}])
def test_a_record_with_a_bad_pod_is_rejected_as_pod(over: dict[str, Any]) -> None:
    with pytest.raises(verify.Rejected) as info:
        verify.parse_endpoint(KEY, record(**over), 1)
    assert info.value.reason == "pod" and "pod" in verify.REASONS


def test_overlayctl_shows_the_pod_as_namespace_slash_name() -> None:
    rows = [overlayctl.with_pod(dict(r.EndpointRecord.from_json(json.dumps(obj)).__dict__))
            for obj in (record(pod_namespace="shop", pod_name="web-0"), record())]
    text = overlayctl.table(rows, overlayctl.COLUMNS["endpoints"]).splitlines()
    at = text[0].split().index("POD")
    assert text[1].split()[at] == "shop/web-0"
    start = text[0].index("POD")
    assert text[2][start:start + len("shop/web-0")].strip() == ""  # no pod: an empty cell
