"""deploy/kubernetes/: every manifest parses, and the pieces fit each other and the code.

No kubelet runs here (docs/kubernetes.md), so what can be checked without one is checked
against the code that will read each piece: the agent's own config parser reads the
ConfigMap's agent.toml with the container's flags, overlay-install's own argparse reads the
init container's command, the plugin's netconf parser the conflist (overlay.install.conflist).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from overlay.agent import config as agent_config
from overlay.install import cli as install_cli
from overlay.install import conflist as conflists
from overlay.install import installer

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra (make deps)")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "overlay-system"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod() -> dict[str, Any]:
    return dict(one("DaemonSet")["spec"]["template"]["spec"])


def container(name: str) -> dict[str, Any]:
    spec = pod()
    found = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1
    return found[0]


def volume(name: str) -> dict[str, Any]:
    return next(v for v in pod()["volumes"] if v["name"] == name)


def mount_for(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount of container `c` under which `path` lies (the deepest one)."""
    mounts = [m for m in c["volumeMounts"]
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is not on any volume of {c['name']}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def host_path_of(c: dict[str, Any], path: str) -> str:
    """Where `path` inside container `c` is on the node (it must be on a hostPath volume)."""
    m = mount_for(c, path)
    source = volume(m["name"])
    assert "hostPath" in source, f"{path} is on {m['name']}, not a hostPath volume"
    return source["hostPath"]["path"] + path[len(m["mountPath"]):]


def file_of(c: dict[str, Any], path: str) -> str:
    """The content a ConfigMap or Secret volume gives `path` inside container `c`."""
    m = mount_for(c, path)
    key = os.path.relpath(path, m["mountPath"])
    source = volume(m["name"])
    if "configMap" in source:
        data = one("ConfigMap", source["configMap"]["name"])["data"]
    else:
        data = one("Secret", source["secret"]["secretName"])["stringData"]
    assert key in data, f"{path}: no key {key!r} in volume {m['name']}"
    return str(data[key])


def agent_argv(tmp_path: Path) -> list[str]:
    """The agent container's command line, $(VARS) expanded as kubelet does, the config file
    path pointed at a copy of the ConfigMap's content."""
    c = container("agent")
    env = {e["name"]: "192.0.2.10" for e in c.get("env", [])}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    config = argv[argv.index("--config") + 1]
    (tmp_path / "agent.toml").write_text(file_of(c, config))
    argv[argv.index("--config") + 1] = str(tmp_path / "agent.toml")
    return argv


def test_every_manifest_parses_and_names_its_namespace() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet",
                                        "Secret"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


def test_volumes_and_mounts_fit() -> None:
    spec = pod()
    declared = [v["name"] for v in spec["volumes"]]
    assert len(declared) == len(set(declared))
    used = set()
    for c in spec["containers"] + spec["initContainers"]:
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        assert len(paths) == len(set(paths)), c["name"]
        for m in c["volumeMounts"]:
            assert m["name"] in declared, f"{c['name']} mounts undeclared volume {m['name']}"
            used.add(m["name"])
    assert used == set(declared), f"declared but never mounted: {set(declared) - used}"
    assert spec["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert one("DaemonSet")["spec"]["selector"]["matchLabels"].items() <= \
        one("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()


def test_the_agent_reads_its_config_and_finds_the_nodes_ovs_and_run_dir(tmp_path: Path) -> None:
    spec, agent = pod(), container("agent")
    assert spec["hostNetwork"] is True and agent["securityContext"]["privileged"] is True
    assert agent["command"] == ["overlay-agent"]
    cfg = agent_config.load(agent_argv(tmp_path))  # unknown keys or bad values fail here
    assert cfg.underlay_ip == "192.0.2.10"
    # The plugin runs on the node and dials the socket at the same path there.
    assert host_path_of(agent, os.path.dirname(cfg.socket)) == os.path.dirname(cfg.socket)
    ovsdb = cfg.ovsdb.removeprefix("unix:")
    assert host_path_of(agent, os.path.dirname(ovsdb)) == "/run/openvswitch"
    assert host_path_of(agent, cfg.rundir) == "/run/openvswitch"  # the bridges' .mgmt sockets
    netns = mount_for(agent, "/run/netns/cni-1234")  # what containerd passes as CNI_NETNS
    assert netns.get("mountPropagation") == "HostToContainer"  # netns made after the pod


def test_the_secrets_files_are_the_configs_tls_paths(tmp_path: Path) -> None:
    agent = container("agent")
    cfg = agent_config.load(agent_argv(tmp_path))
    assert cfg.etcd_ca and cfg.etcd_cert and cfg.etcd_key
    assert all(url.startswith("https://") for url in cfg.etcd_endpoints)
    for path in (cfg.etcd_ca, cfg.etcd_cert, cfg.etcd_key):
        assert "BEGIN" in file_of(agent, path)
        assert "secret" in volume(mount_for(agent, path)["name"])


def test_the_probes_reach_the_metrics_listener(tmp_path: Path) -> None:
    agent = container("agent")
    cfg = agent_config.load(agent_argv(tmp_path))
    host, _, port = cfg.metrics_address.rpartition(":")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = agent[probe]["httpGet"]
        assert (get["host"], str(get["port"]), get["path"]) == (host, port, path)


def test_the_init_container_runs_overlay_install_as_its_parser_reads_it(tmp_path: Path) -> None:
    init = container("install-cni")
    assert init["image"] == container("agent")["image"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert init["command"][0] in pyproject["project"]["scripts"]
    args = install_cli.build_parser().parse_args(init["command"][1:])  # SystemExit if unknown
    assert args.cni_only and args.conflist
    # Debian's reference plugins' directory too: loopback and portmap are linked from it.
    for inside in (os.path.dirname(installer.PLUGIN_PATH), installer.CONFLIST_DIR,
                   installer.DEBIAN_CNI_DIR):
        assert host_path_of(init, os.path.join(args.root, inside)) == "/" + inside
    text = file_of(init, args.conflist)
    conf = conflists.check(text)  # as the plugin will read it
    cfg = agent_config.load(agent_argv(tmp_path))
    assert conf["plugins"][0]["agentSocket"] == cfg.socket
    assert conf["plugins"][0].get("bridge", "br-int") == cfg.bridge
    assert json.loads(text) == json.loads(conflists.default_text())  # the wheel's default
    # And the install itself, into a stand-in for the node's root.
    (tmp_path / "c.conflist").write_text(text)
    report = installer.install_with(installer.Options(
        root=str(tmp_path / "node"), cni_only=True, conflist=str(tmp_path / "c.conflist")))
    assert len(report.changed) == 2


def test_the_image_is_the_one_deploy_image_builds() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for c in pod()["containers"] + pod()["initContainers"]:
        assert c["image"] == f"localhost/overlay/agent:{version}"
        assert c["imagePullPolicy"] == "Never"  # imported on each node, no registry
    assert "NAME=${OVERLAY_IMAGE_NAME:-localhost/overlay/agent:$version}" in \
        (ROOT / "deploy/image/build.sh").read_text()
