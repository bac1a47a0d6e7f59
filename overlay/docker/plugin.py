"""The Docker plugin served by the agent: Plugin.Activate, NetworkDriver.*, IpamDriver.*.

The agent starts it when its config names `docker_plugin_socket` (agent/agent.py). The
plugin's name is the socket's (`ovs.sock` -> `docker network create -d ovs --ipam-driver
ovs`); Docker finds it in /run/docker/plugins/. It is given the agent's CNI service and
store: a Docker endpoint is attached by the same steps, records and flows as a CNI one.
"""

from __future__ import annotations

import os
from typing import Protocol

from overlay.agent.config import AgentConfig
from overlay.cni.ports import NetworkStore
from overlay.cni.service import CniService
from overlay.docker.daemon import DaemonClient
from overlay.docker.driver import NetworkDriver, Snapshots
from overlay.docker.endpoints import EndpointFiles
from overlay.docker.ipam import Holders, IpamDriver
from overlay.docker.labels import ContainerLabels, LabelStore
from overlay.docker.links import DockerLinks
from overlay.docker.networks import Networks
from overlay.docker.protocol import Handler, PluginServer
from overlay.docker.publish import Publisher


class Store(Snapshots, Holders, NetworkStore, LabelStore, Protocol):
    """What the plugin reads and writes in etcd (overlay.store.etcd.Store has it all)."""


def routes(*, name: str, daemon_socket: str, state_dir: str, service: CniService,
           store: Store, label_prefix: str) -> dict[str, Handler]:
    daemon = DaemonClient(daemon_socket)
    networks = Networks(daemon, name)
    attacher, detacher = service.attacher_for(DockerLinks())
    bridge = service.host.bridge
    ipam = IpamDriver(networks=networks, allocator=attacher.allocator, holders=store,
                      host=service.host.name, bridge=bridge)
    endpoints = EndpointFiles(os.path.join(state_dir, "endpoints"))
    labels = ContainerLabels(daemon=daemon, store=store, host=service.host.name,
                             prefix=label_prefix,
                             joined=lambda endpoint_id: endpoints.get(endpoint_id) is not None)
    driver = NetworkDriver(networks=networks, etcd=store, network_records=store,
                           attacher=attacher, detacher=detacher, endpoints=endpoints,
                           publisher=Publisher(), labels=labels, bridge=bridge)
    driver.label_joined()  # endpoints of containers that ran before this start
    activate: Handler = lambda _: {"Implements": ["NetworkDriver", "IpamDriver"]}  # noqa: E731
    return {"/Plugin.Activate": activate, **ipam.routes(), **driver.routes()}


def start(*, socket_path: str, daemon_socket: str, state_dir: str, service: CniService,
          store: Store, label_prefix: str) -> PluginServer:
    name = os.path.basename(socket_path).removesuffix(".sock")
    return PluginServer(socket_path, routes(name=name, daemon_socket=daemon_socket,
                                            state_dir=state_dir, service=service, store=store,
                                            label_prefix=label_prefix))


def from_config(cfg: AgentConfig, service: CniService, store: Store) -> PluginServer:
    """The plugin as the agent's config says: its state beside the agent's socket."""
    return start(socket_path=cfg.docker_plugin_socket, daemon_socket=cfg.docker_host,
                 state_dir=os.path.join(os.path.dirname(cfg.socket), "docker-plugin"),
                 service=service, store=store, label_prefix=cfg.docker_label_prefix)
