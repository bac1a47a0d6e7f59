"""An endpoint's labels, from what the runtime sends with ADD (issue 20, docs/policy.md).

Two channels carry them, read here only:

  args.cni.labels      [{"key": "app", "value": "web"}, ...]   the CNI conventions' labels
  CNI_ARGS             K8S_POD_NAMESPACE=shop                    set by a kubelet

The namespace becomes the label io.kubernetes.pod.namespace, as Kubernetes' own namespace
label does, so a policy selects a namespace with an ordinary endpointSelector. It wins over an
args.cni label of the same key: the kubelet knows the pod's namespace, and a netconf must not
let a container pose as another namespace's. Keys and values follow the Kubernetes rules
(overlay/policy/labels.py); anything else is refused with INVALID_NETCONF (or INVALID_ENV for
CNI_ARGS) before the ADD creates anything.
"""

from __future__ import annotations

from typing import Any

from overlay.cni.netconf import CniEnv, NetConf
from overlay.cni.requests import parse_cni_args
from overlay.errors import CniError, Code
from overlay.policy.labels import MAX_LABELS, NAMESPACE_LABEL, key_problem, value_problem


def endpoint_labels(conf: NetConf, env: CniEnv) -> dict[str, str]:
    """The labels the endpoint record will carry; CniError naming the entry refused."""
    out = _cni_labels(conf.raw.get("args"))
    namespace = parse_cni_args(env.args).get("K8S_POD_NAMESPACE")
    if namespace:
        problem = value_problem(namespace)
        if problem:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS K8S_POD_NAMESPACE: {problem}")
        out[NAMESPACE_LABEL] = namespace
    if len(out) > MAX_LABELS:
        raise CniError(Code.INVALID_NETCONF, f"args.cni.labels: at most {MAX_LABELS} labels, "
                                             f"got {len(out)}")
    return dict(sorted(out.items()))


def _cni_labels(args: Any) -> dict[str, str]:
    cni = args.get("cni") if isinstance(args, dict) else None
    items = cni.get("labels") if isinstance(cni, dict) else None
    if items is None:
        return {}
    if not isinstance(items, list):
        raise CniError(Code.INVALID_NETCONF, "args.cni.labels must be a list of "
                                             "{\"key\": ..., \"value\": ...} objects")
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"args.cni.labels[{i}]"
        if not isinstance(item, dict) or set(item) != {"key", "value"}:
            raise CniError(Code.INVALID_NETCONF, f"{where} must be an object with exactly "
                                                 f"\"key\" and \"value\", got {str(item)[:60]}")
        key, value = item["key"], item["value"]
        problem = key_problem(key) or value_problem(value)
        if problem:
            raise CniError(Code.INVALID_NETCONF, f"{where}: {problem}")
        if key in out:
            raise CniError(Code.INVALID_NETCONF, f"{where}: label {key!r} is given twice")
        out[key] = value
    return out
