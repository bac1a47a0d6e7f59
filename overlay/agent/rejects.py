"""The answers of `reject` rules: a TCP reset or an ICMP unreachable to the sender of each
refused packet that reaches the agent (docs/policy.md, "How it is enforced").

A reject rule sends its packet to the controller through a meter (dataplane/policy_flows.py:
REJECT_METER, which the flow channel puts in before any rule names it). This thread reads
those packet-ins on its own connection to the bridge (ovs/packetin.py), builds the answer
(policy/reject.py) and sends it with a packet-out to where the packet came from, and nowhere
else:
  - in through a local port (the sender is on this host: egress, or ingress between two
    local containers): out of that port;
  - in through the tunnel (ingress from another host): back through the tunnel to the VTEP it
    came from (its tun_src), with its VNI; that host delivers it to the sender by MAC.
The answer is built from the packet alone (addresses swapped), so a container can only ever
make the agent answer itself, once per packet the meter let through, with a packet no larger
than its own.

Packet-ins are untrusted bytes: one that cannot be read, or gets no answer (not IPv4, a
fragment, an ICMP error, a reset), is counted by reason and otherwise ignored; nothing a
container sends can stop this thread. If ovs-vswitchd goes away, the thread connects again
every RETRY seconds; meanwhile refused packets are dropped (what `drop` does).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from overlay.agent.config import AgentConfig
from overlay.dataplane.policy_flows import REJECT_METER
from overlay.model import EGRESS, INGRESS
from overlay.ovs.flow import Actions, Output, SetField
from overlay.ovs.packetin import MAX_PORT, REASON_ACTION, Malformed, PacketIn, PacketIns
from overlay.policy.reject import answer

log = logging.getLogger(__name__)

RETRY = 1.0
DIRECTIONS = {EGRESS: "egress", INGRESS: "ingress"}


def route_back(pin: PacketIn) -> Actions | None:
    """The packet-out's actions that take an answer to where `pin` came from (None: nowhere
    safe to send it)."""
    if pin.in_port >= MAX_PORT:
        return None
    if pin.tun_src is not None:
        if pin.tun_id is None:
            return None
        return (SetField("tun_dst", pin.tun_src), SetField("tun_id", pin.tun_id),
                Output(pin.in_port))
    return (Output(pin.in_port),)


class RejectAnswers(Collector):
    """start() the thread, stop() it; collect() serves what it answered and what not."""

    def __init__(self, *, connection: PacketIns, bridge: str) -> None:
        self._connection = connection
        self._bridge = bridge
        self._lock = threading.Lock()
        self._answered: Counter[tuple[str, str]] = Counter()  # (direction, kind)
        self._unanswered: Counter[str] = Counter()             # reason
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reject answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._connection.close()

    def _run(self) -> None:
        connected = False
        while not self._stop.is_set():
            try:
                if not connected:
                    self._connection.connect()
                    connected = True
                    log.info("answering reject rules' packets on %s", self._bridge)
                self.handle_next(timeout=0.5)
            except OSError as exc:
                if connected:
                    log.warning("lost the packet-in connection to %s (%s): connecting again",
                                self._bridge, exc)
                connected = False
                self._connection.close()
                self._stop.wait(RETRY)
            except Exception:  # noqa: BLE001 (a bug must not end the answers for good)
                log.exception("answering a rejected packet failed")
                self._count_unanswered("error")

    def handle_next(self, timeout: float) -> None:
        """Read one message (if one comes within `timeout`) and answer it if it is ours."""
        try:
            pin = self._connection.receive(timeout)
        except Malformed as exc:
            log.debug("unreadable message from the switch: %s", exc)
            self._count_unanswered("unreadable")
            return
        if pin is None:
            return
        direction = DIRECTIONS.get(pin.table)
        if direction is None or pin.reason != REASON_ACTION:
            self._count_unanswered("not_a_policy_table")
            return
        reply, actions = answer(pin.data), route_back(pin)
        if reply.frame is None or actions is None:
            self._count_unanswered(reply.kind if reply.frame is None else "in_port")
            return
        self._connection.send(actions, reply.frame)
        with self._lock:
            self._answered[(direction, reply.kind)] += 1

    def _count_unanswered(self, reason: str) -> None:
        with self._lock:
            self._unanswered[reason] += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            answered, unanswered = dict(self._answered), dict(self._unanswered)
        sent = CounterMetricFamily("overlay_policy_reject_answers", "Answers sent to packets a "
                                   "reject rule refused (tcp_reset, port_unreachable, "
                                   "admin_prohibited), by direction of the rule",
                                   labels=["direction", "kind"])
        for (direction, kind), n in sorted(answered.items()):
            sent.add_metric([direction, kind], n)
        unsent = CounterMetricFamily("overlay_policy_reject_unanswered", "Packets of reject "
                                     "rules that reached the agent and got no answer, by reason",
                                     labels=["reason"])
        for reason, n in sorted(unanswered.items()):
            unsent.add_metric([reason], n)
        yield from (sent, unsent)


# The meters the flow channel puts in before any rule (ovs/meters.py says why before).
METERS = (REJECT_METER,)


def start(*, cfg: AgentConfig, registry: CollectorRegistry) -> Callable[[], None]:
    """Answer reject rules' packets from now on, counted in `registry`; returns the stop."""
    answers = RejectAnswers(connection=PacketIns(rundir=cfg.rundir, bridge=cfg.bridge),
                            bridge=cfg.bridge)
    registry.register(answers)
    answers.start()
    return answers.stop
