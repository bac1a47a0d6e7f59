"""WireGuard's numbers on /metrics, read from the device at scrape time (agent/encryption.py):
per peer host, the time of the last handshake and the bytes received and sent. A peer whose
handshake is older than ~2 minutes under traffic is not talking to us (a key it does not know,
a port the underlay drops); the byte counters tell encrypted traffic is flowing at all."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerView:
    """One peer as `overlayctl hosts` and the metrics show it."""

    host: str
    fingerprint: str
    address: str
    last_handshake: float  # seconds since the epoch; 0: never
    rx_bytes: int
    tx_bytes: int


class WireGuardCollector(Collector):
    def __init__(self, peers: Callable[[], list[PeerView]]) -> None:
        self._peers = peers

    def collect(self) -> Iterator[Metric]:
        try:
            peers = self._peers()
        except Exception:  # a failing read drops these metrics from one scrape, not the scrape
            log.exception("cannot read WireGuard peers for /metrics")
            return
        count = GaugeMetricFamily("overlay_wireguard_peers", "Hosts this host's WireGuard "
                                  "device holds as peers (hosts with a usable key)")
        count.add_metric([], len(peers))
        handshake = GaugeMetricFamily(
            "overlay_wireguard_last_handshake_seconds", "Time of the last WireGuard handshake "
            "with each peer host (seconds since the epoch; 0: none yet)", labels=["peer"])
        rx = CounterMetricFamily("overlay_wireguard_received_bytes", "Bytes received from "
                                 "each peer host through WireGuard", labels=["peer"])
        tx = CounterMetricFamily("overlay_wireguard_sent_bytes", "Bytes sent to each peer "
                                 "host through WireGuard", labels=["peer"])
        for peer in peers:
            handshake.add_metric([peer.host], peer.last_handshake)
            rx.add_metric([peer.host], peer.rx_bytes)
            tx.add_metric([peer.host], peer.tx_bytes)
        yield from (count, handshake, rx, tx)
