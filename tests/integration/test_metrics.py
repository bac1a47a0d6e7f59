"""A real agent's /metrics, /healthz and /readyz, scraped the way Prometheus does, move as
containers come and go (netns lab: real OVS, etcd and agents, real plugin calls)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import pytest

from overlay.lab import containers as ctr
from overlay.lab.faults import restart_vswitchd
from overlay.lab.topology import Lab, LabHost


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=2)


def scrape(lab: Lab, h: LabHost) -> dict[str, float]:
    """`name{labels}` -> value, from the agent's text exposition."""
    status, body = lab.agent_http(h, "/metrics")
    assert status == 200
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            samples[key] = float(val)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                   if labels else "")
    return samples.get(want, 0.0)


def wait_for_value(lab: Lab, h: LabHost, name: str, expected: float, **labels: str) -> None:
    deadline = time.monotonic() + 15
    while (got := sample(scrape(lab, h), name, **labels)) != expected:
        assert time.monotonic() < deadline, f"{name}{labels} stayed {got}, expected {expected}"
        time.sleep(0.2)


def test_probes_say_alive_and_ready(lab: Lab) -> None:
    for h in lab.hosts:
        assert lab.agent_http(h, "/healthz") == (200, "ok\n")
        status, body = lab.agent_http(h, "/readyz?verbose")
        assert status == 200, body
        for check in ("etcd-synced", "ovsdb-connected", "vswitchd-answers", "flows-installed"):
            assert f"[+]{check} ok" in body


def test_values_move_with_add_and_del(lab: Lab) -> None:
    h0, h1 = lab.host("host0"), lab.host("host1")
    # host1 follows my-net's endpoints only while it has a container of its own in it
    assert ctr.add_container(lab, "m1", "host1").returncode == 0
    before = scrape(lab, h0)
    assert sample(before, "overlay_endpoints", location="local") == 0
    assert sample(before, "overlay_flows", table="0", table_name="classify") > 0

    assert ctr.add_container(lab, "m0", "host0").returncode == 0
    after_add = scrape(lab, h0)
    assert sample(after_add, "overlay_cni_requests_total", command="ADD", code="0") == \
        sample(before, "overlay_cni_requests_total", command="ADD", code="0") + 1
    assert sample(after_add, "overlay_cni_request_duration_seconds_count", command="ADD",
                  result="ok") >= 1
    assert sample(after_add, "overlay_endpoints", location="local") == 1
    # the new port's anti-spoofing, ARP and forwarding flows are in the switch
    for table, name in ((0, "classify"), (10, "arp"), (20, "forward")):
        assert sample(after_add, "overlay_flows", table=str(table), table_name=name) > \
            sample(before, "overlay_flows", table=str(table), table_name=name)
    assert sample(after_add, "overlay_ip_addresses", network="my-net", state="used") == 2
    assert sample(after_add, "overlay_ip_addresses", network="my-net", state="free") == 252
    wait_for_value(lab, h1, "overlay_endpoints", 1, location="remote")  # through the watch

    # an answer the agent refuses is counted under its CNI code: CHECK of an unknown container
    c = lab.containers["m0"]
    out = ctr.cni_exec(lab.cni_bin, "CHECK", container_id="nobody", netns=f"/var/run/netns/{c['netns']}",
                       ifname="eth0", netconf=ctr.plugin_netconf(ctr.read_conflist(h0, "my-net")))
    assert out.returncode != 0
    assert sample(scrape(lab, h0), "overlay_cni_requests_total", command="CHECK", code="3") == 1

    assert ctr.del_container(lab, "m0").returncode == 0
    after_del = scrape(lab, h0)
    assert sample(after_del, "overlay_cni_requests_total", command="DEL", code="0") == 1
    assert sample(after_del, "overlay_endpoints", location="local") == 0
    assert sample(after_del, "overlay_flows", table="10", table_name="arp") == \
        sample(before, "overlay_flows", table="10", table_name="arp")
    wait_for_value(lab, h1, "overlay_endpoints", 0, location="remote")
    assert ctr.del_container(lab, "m1").returncode == 0


def test_ovs_restart_is_counted(lab: Lab) -> None:
    h = lab.host("host1")
    before = sample(scrape(lab, h), "overlay_ovs_restarts_total")
    restart_vswitchd(h)  # returns once the switch holds its whole table again
    wait_for_value(lab, h, "overlay_ovs_restarts_total", before + 1)
    status, body = lab.agent_http(h, "/readyz")
    deadline = time.monotonic() + 15
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = lab.agent_http(h, "/readyz")
    assert status == 200, body
    assert re.search(r'overlay_flows\{table="0",table_name="classify"\} [1-9]',
                     lab.agent_http(h, "/metrics")[1])


def test_twenty_ovs_restarts_are_each_detected_once_and_healed(lab: Lab) -> None:
    """The issue's reproduction, 20 times: each restart of host1's ovs-vswitchd (SIGTERM and
    SIGKILL in turn) is counted exactly once, and the switch gets its whole table back (the
    bound is generous: the figures are bench/ovs_restart.py's)."""
    h = lab.host("host1")
    assert ctr.add_container(lab, "r1", "host1").returncode == 0  # endpoint rules too
    try:
        with open(h.agent_pidfile) as fh:
            agent = fh.read()
        before = sample(scrape(lab, h), "overlay_ovs_restarts_total")
        for i in range(1, 21):
            restart_vswitchd(h, kill=i % 2 == 0, timeout=30)
            wait_for_value(lab, h, "overlay_ovs_restarts_total", before + i)
        with open(h.agent_pidfile) as fh:
            assert fh.read() == agent  # the same agent healed them all
    finally:
        assert ctr.del_container(lab, "r1").returncode == 0


def test_json_logs_from_a_real_agent(lab: Lab) -> None:
    """log_format = "json": every line the agent writes is one JSON object."""
    import json

    h = lab.host("host1")
    lab.stop_agent(h)
    with open(h.agent_config, "a") as fh:
        fh.write('log_format = "json"\n')
    os.truncate(h.agent_log, 0)
    lab.start_agent(h)
    status, _ = lab.agent_http(h, "/healthz")
    assert status == 200
    with open(h.agent_log) as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert any(r["msg"].startswith("serving CNI on") and r["level"] == "info" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
