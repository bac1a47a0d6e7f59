"""The lab's `container add --label KEY=VALUE` (repeatable) becomes args.cni.labels."""

from __future__ import annotations

import pytest

from overlay.lab import __main__ as lab_cli
from overlay.lab import containers as ctr


def test_repeated_labels_reach_the_netconf_as_the_cni_conventions_say() -> None:
    args = lab_cli.build_parser().parse_args(
        ["container", "add", "c0", "--label", "app=web", "--label", "tier=", "--label", "a=b=c"])
    labels = lab_cli._labels(args.label)
    assert labels == {"app": "web", "tier": "", "a": "b=c"}
    conf = ctr.with_labels({"name": "n", "args": {"cni": {"ips": ["10.0.0.9"]}}}, labels)
    assert conf["args"]["cni"] == {"ips": ["10.0.0.9"], "labels": [
        {"key": "app", "value": "web"}, {"key": "tier", "value": ""}, {"key": "a", "value": "b=c"}]}


def test_a_label_without_equals_is_refused() -> None:
    with pytest.raises(SystemExit, match="--label 'app': expected KEY=VALUE"):
        lab_cli._labels(["app"])
