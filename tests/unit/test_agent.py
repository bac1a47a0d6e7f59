"""The agent as a component (overlay/agent/agent.py): the order of its start-up phases, a stop
that closes what was started (latest first, once) whatever phase start() reached, and the
resync loop's rounds. No OVS, etcd or root needed."""

from __future__ import annotations

import logging
import re
import socket
import threading
from pathlib import Path

import pytest

from overlay.agent import agent as agent_mod
from overlay.agent import startup
from overlay.agent.agent import Agent, StartError, build
from overlay.agent.config import AgentConfig
from overlay.agent.metrics import Metrics
from overlay.agent.metrics_server import Readiness

# start()'s phases, in the order the module docstring gives: OVS, the local endpoints from
# OVSDB, etcd (registration, then the watches), the table, then the socket.
PHASES = ["check_tls", "serve_metrics", "prepare_ovs", "restore_local", "register_host",
          "follow_etcd", "install_table", "build_service", "clean_leftovers", "serve_cni",
          "start_switch_watcher"]


class Recording(Agent):
    """Every phase records its name and registers its own closer; `fail_at` raises there."""

    def __init__(self, fail_at: str = "") -> None:
        super().__init__(cfg=AgentConfig(host="n1"), metrics=Metrics(), readiness=Readiness(),
                         stop=threading.Event())
        self.calls: list[str] = []
        self.fail_at = fail_at
        for name in PHASES:
            setattr(self, f"_{name}", self._phase(name))

    def _phase(self, name: str):  # type: ignore[no-untyped-def]
        def run() -> None:
            if name == self.fail_at:
                raise StartError(f"{name} failed")
            self.calls.append(name)
            self._closing.callback(self.calls.append, f"close {name}")
        return run

    def _new_switch_watcher(self):  # type: ignore[no-untyped-def]
        return type("W", (), {"reference": lambda self: True})()  # constructed apart from its start


def test_start_runs_the_phases_in_order_and_stop_closes_them_latest_first_once() -> None:
    agent = Recording()
    agent._node = type("N", (), {"vtep": "10.0.0.1", "datapath": "netdev"})()  # for the log
    agent.start()
    assert agent.calls == PHASES
    agent.stop()
    agent.stop()
    assert agent.calls == PHASES + [f"close {name}" for name in reversed(PHASES)]


@pytest.mark.parametrize("fail_at", ["prepare_ovs", "register_host", "serve_cni"])
def test_a_failed_phase_ends_start_up_and_stop_closes_only_what_was_started(fail_at: str) -> None:
    agent = Recording(fail_at=fail_at)
    with pytest.raises(StartError, match=f"{fail_at} failed"):
        agent.start()
    started = PHASES[:PHASES.index(fail_at)]
    assert agent.calls == started
    agent.stop()
    agent.stop()
    assert agent.calls == started + [f"close {name}" for name in reversed(started)]


def test_stop_before_start_does_nothing() -> None:
    agent = build(AgentConfig(host="n1"))
    agent.stop()
    agent.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_ovs_missing_refuses_to_start_and_stop_closes_the_metrics_listener(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real phases up to OVS: /healthz is served before OVS is touched; an OVSDB that is
    not there is a StartError naming it, and stop() then closes the metrics port."""
    cfg = AgentConfig(host="n1", metrics_address="127.0.0.1:0",
                      ovsdb=f"unix:{tmp_path}/db.sock", socket=f"{tmp_path}/agent.sock")
    agent = build(cfg)
    caplog.set_level(logging.INFO)
    with pytest.raises(StartError, match=r"^cannot prepare OVS: cannot connect to OVSDB"):
        agent.start()
    found = re.search(r"/readyz on 127\.0\.0\.1:0 \(port (\d+)\)", caplog.text)
    assert found, caplog.text
    port = int(found.group(1))
    assert _listening(port)
    agent.stop()
    assert not _listening(port)
    agent.stop()  # twice: nothing left to close
    assert "stopping" not in caplog.messages  # it never served


def test_run_checks_every_round_and_runs_the_janitor_every_fourth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = Agent(cfg=AgentConfig(host="n1"), metrics=Metrics(), readiness=Readiness(),
                  stop=threading.Event(), resync_interval=0)
    rounds: list[int] = []
    janitor: list[int] = []

    def resync() -> None:
        rounds.append(len(rounds) + 1)
        if len(rounds) == 9:
            agent.request_stop()
    monkeypatch.setattr(agent, "_resync", resync)
    monkeypatch.setattr(agent, "_save_peers", lambda: None)
    monkeypatch.setattr(agent, "_janitor", object(), raising=False)
    monkeypatch.setattr(agent, "_reconciler", type("R", (), {"own_records": list})(),
                        raising=False)
    monkeypatch.setattr(startup, "run_janitor",
                        lambda service, metrics, own: janitor.append(len(rounds)))
    agent.run()
    assert len(rounds) == 9
    assert janitor == [n for n in range(1, 10) if n % agent_mod.JANITOR_EVERY == 0] == [4, 8]


def test_threads_left_after_stop_are_named() -> None:
    from overlay.agent.main import threads_left

    before = set(threads_left())  # other tests of this process may have left some
    stop = threading.Event()
    forgotten = threading.Thread(target=stop.wait, name="forgotten", daemon=True)
    forgotten.start()
    try:
        assert set(threads_left()) - before == {"forgotten"}
    finally:
        stop.set()
        forgotten.join()
