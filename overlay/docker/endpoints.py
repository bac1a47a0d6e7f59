"""The Docker endpoints of this host, one JSON file each, kept across agent restarts.

CreateEndpoint is the only call that carries an endpoint's address and MAC; Join, Leave and
DeleteEndpoint name only its ID, and may come after the agent restarted. A file per endpoint
(written whole, then renamed) is all the state the driver has of its own; etcd and OVS hold
the attachment itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Endpoint:
    network_id: str
    network: str        # its name: the network's name in etcd
    container_id: str   # the attachment's container ID in etcd and OVS (ipam.container_id_for)
    address: str        # with prefix, e.g. 10.0.0.2/24
    mac: str
    labels: dict[str, str] = field(default_factory=dict)  # given as driver options (labels.py)


class EndpointFiles:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._dir = directory

    def _path(self, endpoint_id: str) -> str:
        return os.path.join(self._dir, endpoint_id + ".json")  # the ID is checked hex

    def put(self, endpoint_id: str, ep: Endpoint) -> None:
        tmp = self._path(endpoint_id) + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(asdict(ep), fh)
        os.replace(tmp, self._path(endpoint_id))

    def get(self, endpoint_id: str) -> Endpoint | None:
        try:
            with open(self._path(endpoint_id)) as fh:
                return Endpoint(**json.load(fh))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # unreadable: as if unknown (DeleteEndpoint then has nothing to do)

    def remove(self, endpoint_id: str) -> None:
        try:
            os.unlink(self._path(endpoint_id))
        except FileNotFoundError:
            pass

    def ids(self) -> list[str]:
        return [n[:-5] for n in os.listdir(self._dir) if n.endswith(".json")]
