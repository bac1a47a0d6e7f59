"""Questions to the local Docker daemon's API, over its unix socket.

libnetwork tells a driver only a network's ID, and an IPAM driver not even that (a pool): the
network's name, its options and its subnet are the daemon's. The name is what the network is
called in etcd on every host, so the plugin asks the daemon (GET /networks/<id>) once the
network exists there, and keeps the answer (a network's name and options never change).
Nor does Join name the container: its labels are asked for after Join (labels.py), through
the network's list of containers by endpoint, then the container and its image.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

from overlay.docker.protocol import DockerError

API_VERSION = "v1.41"  # Engine 20.10; every later engine still serves it


@dataclass(frozen=True)
class DockerNetwork:
    id: str
    name: str
    driver: str
    ipam_driver: str
    subnets: tuple[str, ...]
    options: dict[str, str]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class DaemonClient:
    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self._path = socket_path.removeprefix("unix://")
        self._timeout = timeout

    def _get(self, path: str) -> tuple[int, Any]:
        conn = _UnixConnection(self._path, self._timeout)
        try:
            conn.request("GET", f"/{API_VERSION}{path}")
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise DockerError(f"cannot reach the Docker daemon at {self._path}: {exc} (is "
                              "docker_host in the agent's config the daemon's socket?)") from None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, None

    def network(self, network_id: str) -> DockerNetwork | None:
        status, body = self._get(f"/networks/{urllib.parse.quote(network_id)}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise DockerError(f"the Docker daemon answered {status} for network {network_id}")
        return _parse(body)

    def networks(self, driver: str) -> list[DockerNetwork]:
        query = urllib.parse.quote(json.dumps({"driver": {driver: True}}))
        status, body = self._get(f"/networks?filters={query}")
        if status != 200 or not isinstance(body, list):
            raise DockerError(f"the Docker daemon answered {status} listing its networks")
        return [_parse(item) for item in body if isinstance(item, dict)]


    def endpoint_container(self, network_id: str, endpoint_id: str) -> str | None:
        """The ID of the container that holds the endpoint, once the daemon lists it there."""
        status, body = self._get(f"/networks/{urllib.parse.quote(network_id)}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise DockerError(f"the Docker daemon answered {status} for network {network_id}")
        for container_id, info in _dict(body.get("Containers")).items():
            if _dict(info).get("EndpointID") == endpoint_id:
                return str(container_id)
        return None

    def container_labels(self, container_id: str) -> tuple[dict[str, str], str]:
        """A container's labels (its image's included, as Docker merges them) and image ID."""
        status, body = self._get(f"/containers/{urllib.parse.quote(container_id)}/json")
        if status != 200 or not isinstance(body, dict):
            raise DockerError(f"the Docker daemon answered {status} for container "
                              f"{container_id}")
        return _labels(_dict(body.get("Config")).get("Labels")), str(body.get("Image", ""))

    def image_labels(self, image: str) -> dict[str, str]:
        status, body = self._get(f"/images/{urllib.parse.quote(image)}/json")
        if status != 200 or not isinstance(body, dict):
            raise DockerError(f"the Docker daemon answered {status} for image {image}")
        return _labels(_dict(body.get("Config")).get("Labels"))


def _labels(value: Any) -> dict[str, str]:
    return {k: v for k, v in _dict(value).items() if isinstance(k, str) and isinstance(v, str)}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parse(body: dict[str, Any]) -> DockerNetwork:
    ipam = _dict(body.get("IPAM"))
    configs = ipam.get("Config")
    subnets = tuple(str(c["Subnet"]) for c in (configs if isinstance(configs, list) else [])
                    if isinstance(c, dict) and c.get("Subnet"))
    options = _dict(body.get("Options"))
    return DockerNetwork(str(body.get("Id", "")), str(body.get("Name", "")),
                         str(body.get("Driver", "")), str(ipam.get("Driver", "")), subnets,
                         {str(k): str(v) for k, v in options.items()})
