"""A real agent's switch holds exactly what etcd says, whatever the write pattern: many
endpoints in one transaction, a DeleteRange of hundreds, a lease revoke that takes many hosts'
records at once, and compaction while the agent is frozen in the middle of a burst.

Simulated hosts and endpoints are written into the lab's etcd as agents write them
(tests/e2e/etcd_writer.py, run in the underlay namespace); host0 has a container in the same
network, so its agent follows it. After each step the forwarding rules of host0's br-int for
that network (MAC -> VTEP) must equal what etcd holds for live hosts other than host0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab

WRITER = os.path.join(os.path.dirname(__file__), "etcd_writer.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETWORK, VNI = "bulk", 4343


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=1, network=(NETWORK, VNI, "10.200.0.0/16"))
    out = ctr.add_container(lab, "c0", "host0", NETWORK)
    assert out.returncode == 0, out.stdout
    return lab


def write(lab: Lab, *args: str) -> str:
    files = lab.root_tls if lab.tls else lab.etcd_client_tls
    cmd = ["env", f"PYTHONPATH={ROOT}", f"ETCD_CA={files.ca}", f"ETCD_CERT={files.cert}",
           f"ETCD_KEY={files.key}", sys.executable, WRITER, lab.local_etcd_url, *args]
    return run(cmd, netns=lab.underlay_ns).stdout.strip()


def expected(lab: Lab) -> dict[str, str]:
    return dict(json.loads(write(lab, "expected", "host0")))


def in_switch(lab: Lab) -> tuple[dict[str, str], set[str]]:
    """(remote MAC -> VTEP of the unicast rules, VTEPs the broadcast rule replicates to)."""
    h = lab.host("host0")
    out = run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
               f"unix:{h.ovs_dir}/br-int.mgmt", f"table=20,reg0={VNI}"]).stdout
    unicast, flood = {}, set()
    for line in out.splitlines():
        vteps = [part.split("->tun_dst")[0] for part in line.split("set_field:")
                 if "->tun_dst" in part]
        if "priority=50" in line:
            flood = set(vteps)
        elif vteps and "dl_dst=" in line:
            unicast[line.split("dl_dst=")[1].split()[0].split(",")[0]] = vteps[0]
    return unicast, flood


def converges(lab: Lab, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    want = expected(lab)
    while (have := in_switch(lab)) != (want, set(want.values())) and time.monotonic() < deadline:
        time.sleep(0.2)
    unicast, flood = have
    assert unicast == want, (f"switch has {len(unicast)} remote MACs, etcd {len(want)}; "
                             f"missing {sorted(set(want) - set(unicast))[:5]}, "
                             f"extra {sorted(set(unicast) - set(want))[:5]}")
    assert flood == set(want.values()), "broadcast goes to other hosts than those of the network"
    return unicast


def test_transaction_delete_range_and_lease_revoke(lab: Lab) -> None:
    lease = write(lab, "hosts", "0", "30")
    write(lab, "txn", "0", "100")        # 100 endpoints, one revision
    assert len(converges(lab)) == 100
    write(lab, "puts", "100", "200")     # one key per put
    assert len(converges(lab)) == 300
    write(lab, "del-prefix", f"/overlay/v1/endpoints/{NETWORK}/sim-000")  # sim-00000..00099
    assert len(converges(lab)) == 200
    write(lab, "revoke", lease)          # 30 hosts' records vanish at one revision
    assert converges(lab) == {}
    write(lab, "del-prefix", f"/overlay/v1/endpoints/{NETWORK}/sim-")


def test_compaction_while_the_agent_is_frozen_mid_burst(lab: Lab) -> None:
    write(lab, "hosts", "0", "60")
    pid = int(open(lab.host("host0").agent_pidfile).read())
    write(lab, "puts", "0", "100")
    os.kill(pid, signal.SIGSTOP)         # the agent stops reading its watch mid-burst
    try:
        write(lab, "burst-compact", "100", "500")
        write(lab, "del-prefix", f"/overlay/v1/endpoints/{NETWORK}/sim-001")  # 100-199 again
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(converges(lab, timeout=60)) == 500
