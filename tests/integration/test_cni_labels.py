"""Labels ride along with ADD into the endpoint record (overlay/cni/labels.py), and bad ones
get a CNI error naming the entry, leaving nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


def _add(lab: Lab, netns: str, labels: Any, cni_args: str = "", cid: str = "lbl-1"
         ) -> ctr.CniOutcome:
    conf = Cni(lab).netconf(lab.hosts[0], args={"cni": {"labels": labels}})
    return ctr.cni_exec(lab.cni_bin, "ADD", container_id=cid, netns=netns, ifname="eth0",
                        netconf=conf, cni_args=cni_args)


def _record(lab: Lab, cid: str) -> dict[str, Any]:
    out = run(lab.etcdctl("get", "--print-value-only", f"/overlay/v1/endpoints/my-net/{cid}/eth0"),
              netns=lab.underlay_ns).stdout
    rec: dict[str, Any] = json.loads(out)
    return rec


def test_labels_and_the_pod_namespace_reach_the_record(lab: Lab, netns: str) -> None:
    added = _add(lab, netns, [{"key": "app", "value": "web"},
                              {"key": "example.com/tier", "value": ""},
                              {"key": "io.kubernetes.pod.namespace", "value": "posing"}],
                 cni_args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
    assert added.returncode == 0, added.stdout + added.stderr
    try:
        # The kubelet's namespace wins over a netconf label of the same key.
        assert _record(lab, "lbl-1")["labels"] == {
            "app": "web", "example.com/tier": "", "io.kubernetes.pod.namespace": "shop"}
    finally:
        deleted = Cni(lab)("DEL", Cni(lab).netconf(lab.hosts[0]), container_id="lbl-1",
                           netns=netns)
        assert deleted.returncode == 0, deleted.stdout


@pytest.mark.parametrize(("labels", "cni_args", "code", "words"), [
    ([{"key": "app", "value": "we b"}], "", 7, "args.cni.labels[0]: label value 'we b'"),
    ([{"key": "ok", "value": "1"}, {"key": "-app", "value": "x"}], "", 7,
     "args.cni.labels[1]: label key '-app'"),
    ([{"key": "app", "value": "a"}, {"key": "app", "value": "b"}], "", 7,
     "args.cni.labels[1]: label 'app' is given twice"),
    ([{"key": "app"}], "", 7, "args.cni.labels[0] must be an object with exactly"),
    ({"app": "web"}, "", 7, "args.cni.labels must be a list"),
    ([{"key": f"k{i}", "value": ""} for i in range(65)], "", 7, "at most 64 labels"),
    ([], "IgnoreUnknown=1;K8S_POD_NAMESPACE=Not_A/Namespace", 4, "K8S_POD_NAMESPACE"),
])
def test_bad_labels_are_refused_and_leave_nothing(lab: Lab, netns: str, labels: Any,
                                                  cni_args: str, code: int, words: str) -> None:
    before = host_snapshot(lab, lab.hosts[0], netns)
    out = _add(lab, netns, labels, cni_args, cid="lbl-bad")
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    err = out.json()
    assert err["code"] == code, err
    assert words in err["msg"] + err.get("details", ""), err
    assert host_snapshot(lab, lab.hosts[0], netns) == before
