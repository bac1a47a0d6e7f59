"""The agent's answerer (overlay/agent/rejects.py) on a fake packet-in connection: what it
answers and where it sends it, what it counts instead, and that nothing it reads stops it
(an unreadable message, bytes that are no packet, a lost connection)."""

from __future__ import annotations

import struct
import time

from overlay.agent.rejects import RejectAnswers
from overlay.ovs.flow import Actions, Output, SetField
from overlay.ovs.packetin import Malformed, PacketIn
from overlay.policy.reject import answer

SYN = (bytes.fromhex("0a580a000003" "0a580a000002" "0800")
       + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 0, 0, 2]),
                     bytes([10, 0, 0, 3]))
       + struct.pack("!HHIIBBHHH", 40000, 80, 7, 0, 5 << 4, 0x02, 1024, 0, 0))


def pin(data: bytes, *, table: int = 90, tun_src: str | None = "172.31.0.2",
        in_port: int = 1) -> PacketIn:
    return PacketIn(table=table, reason=1, cookie=0, in_port=in_port, tun_src=tun_src,
                    tun_id=42 if tun_src else None, data=data, total_len=len(data))


class FakeConnection:
    """Plays back `script`: a PacketIn, None, or an exception to raise, per receive()."""

    def __init__(self, script: list[PacketIn | None | Exception]) -> None:
        self.script = script
        self.sent: list[tuple[Actions, bytes]] = []
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1

    def receive(self, timeout: float) -> PacketIn | None:
        if not self.script:
            time.sleep(min(timeout, 0.05))
            return None
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def send(self, actions: Actions, data: bytes) -> None:
        self.sent.append((actions, data))

    def close(self) -> None:
        pass


def samples(answers: RejectAnswers) -> dict[tuple[str, tuple[str, ...]], float]:
    out = {}
    for family in answers.collect():
        for s in family.samples:
            out[(s.name, tuple(s.labels.values()))] = s.value
    return out


def answerer(script: list[PacketIn | None | Exception]) -> tuple[RejectAnswers, FakeConnection]:
    fake = FakeConnection(script)
    return RejectAnswers(connection=fake, bridge="br-int"), fake  # type: ignore[arg-type]


def test_an_answer_goes_back_where_the_packet_came_from_and_is_counted() -> None:
    answers, fake = answerer([pin(SYN), pin(SYN, table=12, tun_src=None, in_port=5)])
    answers.handle_next(0)
    answers.handle_next(0)
    assert fake.sent == [
        ((SetField("tun_dst", "172.31.0.2"), SetField("tun_id", 42), Output(1)),
         answer(SYN).frame),
        ((Output(5),), answer(SYN).frame)]
    got = samples(answers)
    assert got[("overlay_policy_reject_answers_total", ("ingress", "tcp_reset"))] == 1
    assert got[("overlay_policy_reject_answers_total", ("egress", "tcp_reset"))] == 1


def test_what_is_not_answered_is_counted_by_reason_and_sends_nothing() -> None:
    answers, fake = answerer([pin(SYN, table=20), pin(b"\x00" * 10), Malformed("bad match"),
                              pin(SYN, in_port=0xFFFFFFFE, tun_src=None), None])
    for _ in range(5):
        answers.handle_next(0)
    assert fake.sent == []
    got = samples(answers)
    for reason in ("not_a_policy_table", "truncated", "unreadable", "in_port"):
        assert got[("overlay_policy_reject_unanswered_total", (reason,))] == 1, reason


def test_the_thread_outlives_a_lost_connection_and_a_bug() -> None:
    def send(actions: Actions, data: bytes) -> None:
        raise RuntimeError("a bug")
    answers, fake = answerer([ConnectionResetError("switch gone"), pin(SYN)])
    fake.send = send  # type: ignore[method-assign]
    answers.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            ("overlay_policy_reject_unanswered_total", ("error",)) not in samples(answers)):
        time.sleep(0.05)
    answers.stop()
    assert fake.connects == 2  # connected again after the loss
    assert samples(answers)[("overlay_policy_reject_unanswered_total", ("error",))] == 1
