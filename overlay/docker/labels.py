"""A Docker container's labels on its endpoint record, for network policy (docs/docker.md).

libnetwork's Join names the endpoint and the container's sandbox, never the container, and
the daemon holds the container's lock while it calls Join, so nothing can be asked about the
container then. Once Join has returned, a thread of its own asks the daemon which container
holds the endpoint (GET /networks/<id> lists containers by EndpointID once the join is done),
reads that container's labels and writes the chosen ones onto the endpoint record; the agents
then apply them as any label change (a new container's first packets go out before that: see
the docs). Docker labels never change while a container lives, so one read is all. It polls
with a bound (LABEL_WAIT); a daemon that does not answer or a container that never shows
leaves the endpoint without labels, logged, and never fails or delays the container. Calico's
libnetwork plugin did the same (its org.projectcalico.label. prefix); this is our own take.

`docker network connect --driver-opt overlay.label/app=web` gives labels the driver sees at
CreateEndpoint: those are on the record and in the flows from Join on, with no window, and win
over the container's labels of the same key.

Which labels: only those the operator opted in, under a prefix that is stripped
(`docker run --label overlay.label/app=web` is app=web; the agent's docker_label_prefix, ""
for every label). A prefix because a container carries many labels that are no identity
(com.docker.compose.*, maintainer, build metadata), and because Docker merges the image's
labels into the container's: whoever built an image would otherwise pick the labels that
policies allow. For that second reason a label whose key and value are the image's is not
taken, prefix or not. Keys and values must pass the Kubernetes rules every endpoint label
passes (overlay/policy/labels.py); io.kubernetes.pod.namespace is the kubelet's to set, never a
Docker container's. A label that fails is skipped, logged with the reason, and the others
stay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from overlay.docker.protocol import DockerError
from overlay.errors import CniError
from overlay.policy.labels import MAX_LABELS, NAMESPACE_LABEL, key_problem, value_problem

log = logging.getLogger(__name__)

LABEL_WAIT = 60.0   # seconds to find the container after Join (a loaded daemon starts it slowly)
FIRST_POLL = 0.05   # seconds between questions, doubling up to LAST_POLL
LAST_POLL = 1.0
LIBNETWORK_OPTIONS = "com.docker.network."  # CreateEndpoint options that are libnetwork's own


class LabelDaemon(Protocol):
    def endpoint_container(self, network_id: str, endpoint_id: str) -> str | None: ...
    def container_labels(self, container_id: str) -> tuple[dict[str, str], str]: ...
    def image_labels(self, image: str) -> dict[str, str]: ...


class LabelStore(Protocol):
    def set_endpoint_labels(self, network: str, container_id: str, ifname: str,
                            labels: dict[str, str], *, host: str, netns: str) -> bool: ...


@dataclass(frozen=True)
class Attachment:
    """What the label writer needs of a joined endpoint."""

    endpoint_id: str
    network_id: str
    network: str        # its name in etcd
    container_id: str   # the attachment's, docker-<MAC> (ipam.container_id_for)
    ifname: str
    netns: str          # Join's SandboxKey: tells this attachment from a later one of the key
    # Labels given as driver options (`docker network connect --driver-opt`): on the record
    # from Join, and they win over the container's of the same key.
    given: dict[str, str] = field(default_factory=dict)


def chosen_labels(container: Mapping[str, str], image: Mapping[str, str],
                  prefix: str) -> tuple[dict[str, str], list[str]]:
    """(the endpoint labels, why each other label under `prefix` was skipped)."""
    out: dict[str, str] = {}
    skipped: list[str] = []
    for key, value in sorted(container.items()):
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        problem = key_problem(name) or value_problem(value)
        if image.get(key) == value:
            problem = "the image's label, not one given to the container"
        elif name == NAMESPACE_LABEL:
            problem = "a Kubernetes namespace, which only a kubelet's pods have"
        elif not problem and len(out) == MAX_LABELS:
            problem = f"more than {MAX_LABELS} labels"
        if problem:
            skipped.append(f"{key}: {problem}")
        else:
            out[name] = value
    return out, skipped


def with_given(given: Mapping[str, str],
               container: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The driver options' labels, then the container's up to MAX_LABELS (a record carries no
    more): (the labels, the container's keys left out)."""
    out, dropped = dict(given), []
    for key, value in container.items():
        if key in out:
            continue  # the driver option wins
        if len(out) < MAX_LABELS:
            out[key] = value
        else:
            dropped.append(key)
    return out, dropped


class ContainerLabels:
    def __init__(self, *, daemon: LabelDaemon, store: LabelStore, host: str, prefix: str,
                 joined: Callable[[str], bool], wait: float = LABEL_WAIT) -> None:
        self._daemon = daemon
        self._store = store
        self._host = host
        self._prefix = prefix
        self._joined = joined   # is the endpoint still there (no Leave or DeleteEndpoint yet)
        self._wait = wait

    def given_labels(self, options: Mapping[str, Any], endpoint_id: str) -> dict[str, str]:
        """The labels among CreateEndpoint's options: `--driver-opt overlay.label/app=web` of
        `docker network connect` (libnetwork's own options, com.docker.network.*, are not)."""
        given = {k: v for k, v in options.items() if isinstance(v, str)
                 and not k.startswith(LIBNETWORK_OPTIONS)}
        chosen, skipped = chosen_labels(given, {}, self._prefix)
        for why in skipped:
            log.warning("Docker endpoint %s: driver option %s skipped", endpoint_id[:12], why)
        return chosen

    def follow(self, att: Attachment) -> None:
        """Label the endpoint from a thread of its own: Join returns at once."""
        threading.Thread(target=self.label, args=(att,), daemon=True,
                         name=f"docker-labels:{att.endpoint_id[:12]}").start()

    def follow_all(self, joined: Callable[[], list[Attachment]]) -> None:
        """Label, one after the other on a thread of their own, the attachments `joined()`
        finds: those joined before the agent started (it restarted inside a label's window,
        or was upgraded from a version without labels). Labels already there are not
        written again."""
        def run() -> None:
            try:
                attachments = joined()
            except (DockerError, CniError, OSError) as err:
                log.warning("Docker endpoints joined before this start: not labelled (%s)", err)
                return
            for att in attachments:
                self.label(att)
        threading.Thread(target=run, daemon=True, name="docker-labels:joined").start()

    def label(self, att: Attachment) -> bool:
        """Find the container, write its labels; True once written (or none to write)."""
        deadline = time.monotonic() + self._wait
        delay, last = FIRST_POLL, "the daemon never listed the endpoint's container"
        while self._joined(att.endpoint_id):
            try:
                return self._label_once(att)
            except _NotYet:
                pass
            except (DockerError, CniError, OSError) as err:
                last = str(err)
            if time.monotonic() + delay > deadline:
                log.warning("Docker endpoint %s (%s/%s): no labels, gave up after %.0f s: %s",
                            att.endpoint_id[:12], att.network, att.container_id, self._wait,
                            last)
                return False
            time.sleep(delay)
            delay = min(delay * 2, LAST_POLL)
        return False  # it left first: nothing to label

    def _label_once(self, att: Attachment) -> bool:
        container = self._daemon.endpoint_container(att.network_id, att.endpoint_id)
        if container is None:
            raise _NotYet
        labels, image = self._daemon.container_labels(container)
        image_labels = self._daemon.image_labels(image) if image else {}
        chosen, skipped = chosen_labels(labels, image_labels, self._prefix)
        for why in skipped:
            log.warning("Docker container %s: label %s skipped", container[:12], why)
        chosen, dropped = with_given(att.given, chosen)
        for key in dropped:
            log.warning("Docker container %s: label %s%s skipped: more than %d labels with the "
                        "driver options'", container[:12], self._prefix, key, MAX_LABELS)
        if chosen == att.given:
            return True  # nothing beyond what Join put on the record
        if not self._store.set_endpoint_labels(att.network, att.container_id, att.ifname,
                                               chosen, host=self._host, netns=att.netns):
            log.info("Docker endpoint %s left before its labels were written",
                     att.endpoint_id[:12])
            return False
        log.info("Docker container %s: endpoint %s/%s labels %s", container[:12], att.network,
                 att.container_id, ",".join(f"{k}={v}" for k, v in chosen.items()))
        return True


class _NotYet(Exception):
    """The daemon does not list the endpoint's container yet."""
