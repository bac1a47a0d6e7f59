"""The conflist overlay-install puts in /etc/cni/net.d, and the check it passes first.

The default (overlay.conflist, beside this module) is one cluster-wide network: VNI 1, 10.244.0.0/16 with the
built-in allocator (addresses unique across hosts, so one subnet serves every node), and
`portmap` chained after `ovs` so that a pod's hostPort works (Kubernetes passes portMappings
as a capability). An operator's own conflist (--conflist, e.g. from a Kubernetes ConfigMap)
replaces it; either is checked the way the plugin will read it, before anything is written:
a conflist the plugin would refuse at the first pod's ADD is refused at install time instead.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

FILE_NAME = "10-overlay.conflist"  # runtimes take the first file of net.d in name order


class ConflistError(ValueError):
    """The conflist cannot serve the `ovs` plugin; the message says why."""


def default_text() -> str:
    return resources.files("overlay.install").joinpath("overlay.conflist").read_text()


def check(text: str) -> dict[str, Any]:
    """The parsed conflist, if a runtime and the `ovs` plugin would accept it."""
    from overlay.cni.netconf import PLUGIN_TYPE, parse_netconf
    from overlay.errors import CniError

    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise ConflistError(f"not valid JSON: {exc}") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("plugins"), list):
        raise ConflistError('a conflist is a JSON object with a "plugins" list')
    ours = [p for p in conf["plugins"] if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]
    if len(ours) != 1:
        raise ConflistError(f'the "plugins" list must hold one plugin of type "{PLUGIN_TYPE}", '
                            f"it holds {len(ours)}")
    # A runtime hands each plugin the list's name and cniVersion (libcni's buildOneConfig).
    netconf = {**ours[0], "name": conf.get("name"), "cniVersion": conf.get("cniVersion")}
    try:
        parse_netconf(json.dumps(netconf).encode())
    except CniError as err:
        raise ConflistError(f"the {PLUGIN_TYPE} plugin would refuse it: {err}") from None
    return conf
