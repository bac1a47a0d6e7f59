"""The Kubernetes pod an ADD is for, from the keys a kubelet's runtime puts in CNI_ARGS.

containerd's and CRI-O's CRI plugins pass, with IgnoreUnknown=1:

    K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=...;K8S_POD_UID=...

The namespace and the name go into the endpoint record (`pod_namespace`, `pod_name`), so that
`overlayctl endpoints` says which pod holds an address; the other two keys say nothing an
operator looks for and are left alone. A runtime without Kubernetes sends neither key, and the
record then names no pod. Both keys or neither: a name without its namespace is ambiguous in
any cluster, so such a call is refused before ADD creates anything, as is a name Kubernetes
itself would refuse (overlay/model.py holds the rules).
"""

from __future__ import annotations

from dataclasses import dataclass

from overlay.cni.netconf import CniEnv
from overlay.cni.requests import parse_cni_args
from overlay.errors import CniError, Code
from overlay.model import dns_label_problem, dns_subdomain_problem

NAMESPACE_ARG, NAME_ARG = "K8S_POD_NAMESPACE", "K8S_POD_NAME"


@dataclass(frozen=True)
class Pod:
    namespace: str = ""  # "" and "": no pod (a runtime without Kubernetes)
    name: str = ""


NO_POD = Pod()


def pod_of(env: CniEnv) -> Pod:
    """The pod named by CNI_ARGS, NO_POD if none; CniError (INVALID_ENV) saying what is wrong."""
    args = parse_cni_args(env.args)
    namespace, name = args.get(NAMESPACE_ARG, ""), args.get(NAME_ARG, "")
    if not namespace and not name:
        return NO_POD
    if not namespace or not name:
        given, missing = (NAMESPACE_ARG, NAME_ARG) if namespace else (NAME_ARG, NAMESPACE_ARG)
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS gives {given} without {missing}",
                       "a runtime passes both (kubelet through CRI does), or neither")
    problem = dns_label_problem(namespace)
    if problem:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS {NAMESPACE_ARG}: {problem}",
                       "a Kubernetes namespace is a DNS label, e.g. kube-system")
    problem = dns_subdomain_problem(name)
    if problem:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS {NAME_ARG}: {problem}",
                       "a Kubernetes pod name is a DNS subdomain, e.g. web-0")
    return Pod(namespace, name)
