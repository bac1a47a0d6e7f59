"""A Docker container's labels onto its endpoint record (overlay/docker/labels.py): which labels
are taken, and the poll after Join against a daemon that is slow, gone, or outlived by the
endpoint. Fakes only; tests/e2e/test_docker.py selects real containers by their labels."""

from __future__ import annotations

import logging

import pytest

from overlay.docker import labels as docker_labels
from overlay.docker.labels import Attachment, ContainerLabels, chosen_labels, with_given
from overlay.docker.protocol import DockerError
from overlay.policy.labels import MAX_LABELS

P = "overlay.label/"
ATT = Attachment("e" * 64, "n" * 64, "my-net", "docker-02420a000002", "eth", "/run/netns/abc")


def test_only_labels_under_the_prefix_count_and_the_prefix_is_stripped() -> None:
    got, skipped = chosen_labels({f"{P}app": "web", f"{P}example.com/tier": "front",
                                  "com.docker.compose.project": "shop", "app": "db"}, {}, P)
    assert got == {"app": "web", "example.com/tier": "front"} and skipped == []


def test_the_empty_prefix_takes_every_valid_label() -> None:
    got, skipped = chosen_labels({"app": "web", "maintainer": "Jo <jo@example.com>"}, {}, "")
    assert got == {"app": "web"}
    assert len(skipped) == 1 and skipped[0].startswith("maintainer: label value")


@pytest.mark.parametrize(("key", "value", "why"), [
    (f"{P}Bad_", "x", "the name must be"),
    (f"{P}app", "has space", "label value"),
    (f"{P}UPPER.case/app", "x", "the prefix before '/' must be a DNS subdomain"),
    (f"{P}io.kubernetes.pod.namespace", "shop", "only a kubelet's pods have"),
])
def test_a_label_that_cannot_be_an_endpoint_label_is_skipped_saying_why(
        key: str, value: str, why: str) -> None:
    got, skipped = chosen_labels({key: value, f"{P}role": "ok"}, {}, P)
    assert got == {"role": "ok"}
    assert len(skipped) == 1 and skipped[0].startswith(f"{key}: ") and why in skipped[0]


def test_the_images_labels_are_not_the_containers() -> None:
    # Docker merges the image's labels into the container's: whoever built the image must not
    # pick what policies allow. A label the container was given over the image's counts.
    image = {f"{P}app": "db", f"{P}tier": "back"}
    got, skipped = chosen_labels({f"{P}app": "db", f"{P}tier": "front"}, image, P)
    assert got == {"tier": "front"}
    assert skipped == [f"{P}app: the image's label, not one given to the container"]


def test_no_more_labels_than_a_record_may_carry() -> None:
    many = {f"{P}k{i:03}": "v" for i in range(MAX_LABELS + 2)}
    got, skipped = chosen_labels(many, {}, P)
    assert len(got) == MAX_LABELS and len(skipped) == 2


def test_driver_options_win_and_the_container_fills_up_to_the_bound() -> None:
    got, dropped = with_given({"app": "web"}, {"app": "db", "tier": "front"})
    assert got == {"app": "web", "tier": "front"} and dropped == []
    given = {f"k{i:03}": "v" for i in range(MAX_LABELS - 1)}
    got, dropped = with_given(given, {"a": "1", "b": "2", "k000": "x"})
    assert len(got) == MAX_LABELS and got["a"] == "1" and got["k000"] == "v"
    assert dropped == ["b"]


def test_labels_among_create_endpoints_options() -> None:
    labeller = ContainerLabels(daemon=Daemon(), store=Store(), host="host0", prefix="",
                               joined=lambda _: True)
    options = {"app": "web", "com.docker.network.endpoint.macaddress": "02:42:0a:00:00:02",
               "com.docker.network.portmap": [], "bad key": "x"}
    assert labeller.given_labels(options, "e" * 64) == {"app": "web"}


class Daemon:
    def __init__(self) -> None:
        self.visible_after = 0      # questions before the daemon lists the container
        self.asked = 0
        self.down = False
        self.labels = {f"{P}app": "web", f"{P}bad key": "x"}

    def endpoint_container(self, network_id: str, endpoint_id: str) -> str | None:
        self.asked += 1
        if self.down:
            raise DockerError("cannot reach the Docker daemon at /run/docker.sock")
        return "c" * 64 if self.asked > self.visible_after else None

    def container_labels(self, container_id: str) -> tuple[dict[str, str], str]:
        return self.labels, "sha256:" + "i" * 64

    def image_labels(self, image: str) -> dict[str, str]:
        return {"maintainer": "someone"}


class Store:
    def __init__(self, present: bool = True) -> None:
        self.present = present
        self.written: list[tuple[str, dict[str, str], str]] = []

    def set_endpoint_labels(self, network: str, container_id: str, ifname: str,
                            labels: dict[str, str], *, host: str, netns: str) -> bool:
        self.written.append((f"{network}/{container_id}/{ifname}", labels, netns))
        return self.present


def labeller(daemon: Daemon, store: Store, joined: bool = True,
             wait: float = 2.0) -> ContainerLabels:
    return ContainerLabels(daemon=daemon, store=store, host="host0", prefix=P,
                           joined=lambda _: joined, wait=wait)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_labels, "FIRST_POLL", 0.001)
    monkeypatch.setattr(docker_labels, "LAST_POLL", 0.01)


def test_the_container_found_later_is_labelled_and_bad_labels_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, store = Daemon(), Store()
    daemon.visible_after = 3  # not listed yet right after Join
    with caplog.at_level(logging.INFO, logger="overlay.docker.labels"):
        assert labeller(daemon, store).label(ATT)
    assert daemon.asked == 4
    assert store.written == [("my-net/docker-02420a000002/eth", {"app": "web"},
                              "/run/netns/abc")]
    assert f"label {P}bad key: label key" in caplog.text and "skipped" in caplog.text


def test_an_unreachable_daemon_leaves_no_labels_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, store = Daemon(), Store()
    daemon.down = True
    assert not labeller(daemon, store, wait=0.1).label(ATT)
    assert store.written == [] and daemon.asked > 1  # asked again until the bound
    assert "no labels, gave up after 0 s: cannot reach the Docker daemon" in caplog.text


def test_a_container_never_listed_gives_up_at_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    daemon, store = Daemon(), Store()
    daemon.visible_after = 10**9
    assert not labeller(daemon, store, wait=0.1).label(ATT)
    assert store.written == []
    assert "the daemon never listed the endpoint's container" in caplog.text


def test_an_endpoint_that_left_is_not_asked_about_nor_written() -> None:
    daemon, store = Daemon(), Store()
    assert not labeller(daemon, store, joined=False).label(ATT)
    assert daemon.asked == 0 and store.written == []


def test_a_record_gone_before_the_write_is_not_brought_back() -> None:
    daemon, store = Daemon(), Store(present=False)
    assert not labeller(daemon, store).label(ATT)
    assert len(store.written) == 1  # tried once: set_endpoint_labels refused, nothing more


def test_a_container_without_labels_for_us_writes_nothing() -> None:
    daemon, store = Daemon(), Store()
    daemon.labels = {"maintainer": "someone"}
    assert labeller(daemon, store).label(ATT)
    assert store.written == []
