"""Forged and malformed etcd records, written raw into a 2-host lab's etcd, must not change
what the containers see: the agent verifies every record before it becomes a flow
(overlay/agent/verify.py, claims.py), counts what it rejects, and `overlayctl doctor` says so.

The reproduced attack: a record under endpoints/my-net/0/eth0 naming a host that does not exist,
VTEP 172.31.0.99, MAC ff:ff:ff:ff:ff:ff and c1's address made host0 answer c0's ARP for c1 with
ff:ff:ff:ff:ff:ff, and c0 -> c1 lost every packet until the record was deleted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import run
from overlay.lab.topology import Lab
from overlay.store import records as r

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETWORK, VNI = "my-net", 42

# Writes {key: value-as-text} in one etcd transaction (run in the underlay namespace), as a
# holder of host1's etcd credentials: what any host may write under /overlay/v1/.
_TXN = """
import json, sys
from overlay.store.etcd import Store
store = Store(endpoints=[sys.argv[1]], timeout=10.0, ca=sys.argv[2] or None,
              cert=sys.argv[3] or None, key=sys.argv[4] or None)
client = store.client
ok, _ = client.transaction(compare=[], failure=[], success=[
    client.transactions.put(k, v) for k, v in json.loads(sys.stdin.read()).items()])
assert ok
store.close()
"""


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=2)
    for name, host in (("c0", "host0"), ("c1", "host1")):
        assert ctr.add_container(lab, name, host).returncode == 0
    ctr.wait_converged(lab)
    return lab


def write(lab: Lab, records: dict[str, str]) -> None:
    tls = lab.host_tls("host1")
    run(["env", f"PYTHONPATH={ROOT}", sys.executable, "-c", _TXN, lab.local_etcd_url,
         tls.ca, tls.cert, tls.key], netns=lab.underlay_ns, input=json.dumps(records).encode())


@pytest.fixture
def written(lab: Lab) -> Iterator[Callable[[dict[str, str]], None]]:
    keys: list[str] = []

    def put(records: dict[str, str]) -> None:
        keys.extend(records)
        write(lab, records)
    yield put
    for key in keys:
        run(lab.etcdctl("del", key), netns=lab.underlay_ns)


def forged(cid: str, *, host: str, ip: str, mac: str, **over: Any) -> tuple[str, str]:
    body = {"network": NETWORK, "container_id": cid, "ifname": "eth0", "host": host,
            "vni": VNI, "ips": [f"{ip}/24"], "mac": mac, "port": "ovlforged",
            "netns": "/var/run/netns/forged", "vtep": "172.31.0.99", **over}
    return r.endpoint_key(NETWORK, cid, "eth0"), json.dumps(body)


def metric(lab: Lab, host: str, name: str, **labels: str) -> float:
    _, body = lab.agent_http(lab.host(host))
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def doctor(lab: Lab) -> str:
    cmd = [os.path.join(steps.scripts_dir(), "overlayctl"), *lab.overlayctl_etcd_args(),
           "doctor"]
    for h in lab.hosts:
        cmd += ["--socket", h.socket]
    return run(cmd, netns=lab.underlay_ns, check=False).stdout


def mac_of(lab: Lab, name: str) -> str:
    return run(["cat", "/sys/class/net/eth0/address"],
               netns=lab.containers[name]["netns"]).stdout.strip()


def c0_reaches_c1_at_its_own_mac(lab: Lab) -> None:
    c0, c1 = lab.containers["c0"], lab.containers["c1"]
    run(["ip", "neigh", "flush", "all"], netns=c0["netns"])
    outcome = ctr.ping(c0["netns"], c1["ip"], count=5)
    assert outcome.ok, outcome.summary
    neigh = run(["ip", "neigh", "show", c1["ip"]], netns=c0["netns"]).stdout
    assert mac_of(lab, "c1") in neigh, neigh


def forward_rules(lab: Lab, host: str) -> str:
    h = lab.host(host)
    return run(["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows",
                f"unix:{h.ovs_dir}/br-int.mgmt", f"table=20,reg0={VNI}"]).stdout


def processed(lab: Lab, written: Callable[[dict[str, str]], None], n: int) -> None:
    """Write a good record after the ones under test and wait until host0 forwards it: the
    watch delivers in order, so host0 has dealt with everything written before."""
    mac = f"02:cc:00:00:00:{n:02x}"
    written(dict([forged(f"sentinel{n}", host="host1", ip=f"10.0.0.{180 + n}", mac=mac)]))
    wait_for("host0 forwards the sentinel record", lambda: f"dl_dst={mac}" in
             forward_rules(lab, "host0"))


def test_the_reproduced_attack_changes_nothing_and_is_counted(
        lab: Lab, written: Callable[[dict[str, str]], None]) -> None:
    before = metric(lab, "host0", "overlay_records_rejected_total", kind="endpoint",
                    reason="mac")
    key, value = forged("0", host="ghost", ip=lab.containers["c1"]["ip"],
                        mac="ff:ff:ff:ff:ff:ff")
    written({key: value})
    processed(lab, written, 1)
    c0_reaches_c1_at_its_own_mac(lab)
    assert metric(lab, "host0", "overlay_records_rejected_total", kind="endpoint",
                  reason="mac") > before
    report = doctor(lab)
    assert key in report and "(mac)" in report, report


def test_a_claim_on_c1s_address_by_a_live_host_loses_to_c1_and_doctor_shows_it(
        lab: Lab, written: Callable[[dict[str, str]], None]) -> None:
    c1_ip = lab.containers["c1"]["ip"]
    before = metric(lab, "host0", "overlay_record_conflicts_total")
    key, value = forged("thief", host="host1", ip=c1_ip, mac="02:66:66:66:66:66")
    written({key: value})
    processed(lab, written, 2)
    c0_reaches_c1_at_its_own_mac(lab)
    assert "02:66:66:66:66:66" not in forward_rules(lab, "host0")
    assert metric(lab, "host0", "overlay_record_conflicts_total") > before
    report = doctor(lab)
    assert f"host0: conflict in network {NETWORK}: {c1_ip} is claimed by" in report, report
    assert key in report, report


def test_bad_records_in_a_transaction_are_ignored_and_the_good_one_works(
        lab: Lab, written: Callable[[dict[str, str]], None]) -> None:
    good = forged("good", host="host1", ip="10.0.0.200", mac="02:aa:00:00:00:01")
    bad = {
        "vni": forged("bad-vni", host="host1", ip="10.0.0.201", mac="02:bb:00:00:00:01",
                      vni=4343),
        "subnet": forged("bad-subnet", host="host1", ip="10.9.9.9", mac="02:bb:00:00:00:02"),
        "key_mismatch": (r.endpoint_key(NETWORK, "bad-key", "eth0"),
                         forged("other", host="host1", ip="10.0.0.203",
                                mac="02:bb:00:00:00:03")[1]),
        "malformed": (r.endpoint_key(NETWORK, "bad-deep", "eth0"), "[" * 5000 + "]" * 5000),
    }
    before = {reason: metric(lab, "host0", "overlay_records_rejected_total", kind="endpoint",
                             reason=reason) for reason in bad}
    written(dict([good, *bad.values()]))
    wait_for("host0 forwards the good record to host1", lambda: re.search(
        rf"dl_dst=02:aa:00:00:00:01 .*{lab.host('host1').vtep}->tun_dst",
        forward_rules(lab, "host0")) is not None)
    def rejected(reason: str) -> float:
        return metric(lab, "host0", "overlay_records_rejected_total", kind="endpoint",
                      reason=reason)
    wait_for("host0 counts every bad record",
             lambda: all(rejected(reason) > before[reason] for reason in bad))
    assert "02:bb:" not in forward_rules(lab, "host0")
    c0_reaches_c1_at_its_own_mac(lab)
    report = doctor(lab)  # also reads them all itself, and must not choke on any
    for key, _ in bad.values():
        assert f"host0: {key}: endpoint record rejected" in report, report
