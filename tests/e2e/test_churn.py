"""Churn soak: many ADD/DEL cycles across hosts while agents are restarted at random moments,
then `overlayctl doctor` must find every endpoint with its OVS port, veth, flows and address,
and no leak or duplicate anywhere.

The "runtime" here behaves as runtimes do: a call answered with code 11 (agent unreachable,
e.g. mid-restart) is retried; a failed ADD is followed by DEL before the next try. Cycles:
OVERLAY_CHURN_CYCLES (default 500), spread over the hosts.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from overlay.lab import host as steps
from overlay.lab.shell import add_netns, del_netns, run
from overlay.lab.topology import Lab
from overlay_fixtures import Cni, host_snapshot

CYCLES = int(os.environ.get("OVERLAY_CHURN_CYCLES", "500"))
WORKERS_PER_HOST = 3


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=2)


def retrying(call: Callable[[], object], attempts: int = 60) -> object:
    for _ in range(attempts):
        out = call()
        if out.returncode == 0 or out.json().get("code") != 11:  # type: ignore[attr-defined]
            return out
        time.sleep(0.25)
    return out


def doctor(lab: Lab) -> list[str]:
    cmd = [os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
           "doctor"]
    for h in lab.hosts:
        cmd += ["--socket", h.socket]
    out = run(cmd, netns=lab.underlay_ns, check=False)
    return [] if out.returncode == 0 else out.stdout.splitlines()


def test_churn_with_agent_restarts_leaves_nothing_behind(lab: Lab) -> None:
    cni = Cni(lab)
    before = [host_snapshot(lab, h) for h in lab.hosts]
    stop = threading.Event()
    restarts: list[str] = []
    rng = random.Random(42)

    def chaos() -> None:
        while not stop.wait(rng.uniform(1.5, 4.0)):
            h = rng.choice(lab.hosts)
            with open(h.agent_pidfile) as fh:
                pid = int(fh.read())
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            time.sleep(0.3)
            lab.start_agent(h)
            restarts.append(f"{h.name}:{sig.name}")

    counts = {"ok": 0, "add_failed": 0}
    lock = threading.Lock()

    def worker(index: int) -> None:
        h = lab.hosts[index % len(lab.hosts)]
        name = f"{lab.prefix}-w{index}"
        netns = f"/var/run/netns/{name}"
        add_netns(name)
        try:
            for cycle in range(-(-CYCLES // (WORKERS_PER_HOST * len(lab.hosts)))):
                cid = f"churn-{index}-{cycle}"
                for _ in range(5):
                    added = retrying(lambda cid=cid: cni("ADD", cni.netconf(h), container_id=cid,
                                                 netns=netns))
                    if added.returncode == 0:  # type: ignore[attr-defined]
                        break
                    with lock:
                        counts["add_failed"] += 1
                    deleted = retrying(lambda cid=cid: cni("DEL", cni.netconf(h), container_id=cid,
                                                   netns=netns))
                    assert deleted.returncode == 0, deleted.stdout  # type: ignore[attr-defined]
                else:
                    raise AssertionError(f"ADD {cid} never succeeded: {added.stdout}")  # type: ignore[attr-defined]
                deleted = retrying(lambda cid=cid: cni("DEL", cni.netconf(h), container_id=cid,
                                               netns=netns))
                assert deleted.returncode == 0, deleted.stdout  # type: ignore[attr-defined]
                with lock:
                    counts["ok"] += 1
        finally:
            del_netns(name)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    started = time.monotonic()
    chaos_thread.start()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS_PER_HOST * len(lab.hosts)) as pool:
            list(pool.map(worker, range(WORKERS_PER_HOST * len(lab.hosts))))
    finally:
        stop.set()
        chaos_thread.join(timeout=30)
    for h in lab.hosts:  # every agent up again before judging
        if not os.path.exists(h.socket):
            lab.start_agent(h)
    print(f"\n  {counts['ok']} ADD/DEL cycles in {time.monotonic() - started:.0f} s, "
          f"{len(restarts)} agent restarts ({', '.join(restarts[:6])}...), "
          f"{counts['add_failed']} ADDs failed and were cleaned up by DEL and retried")
    assert counts["ok"] >= CYCLES
    assert restarts, "no agent was restarted during the churn"
    problems = doctor(lab)
    assert problems == [], "\n".join(problems)
    assert [host_snapshot(lab, h) for h in lab.hosts] == before
