"""Issue 15, point 3: a host changes only what it owns. Each attack through the real lab,
plugin, agents and etcd, asserting the safe outcome.

- A container-ID clash: ADD on host1 with c0's container ID (c0 lives on host0) fails with a
  CNI error naming host0; the DEL a runtime sends after a failed ADD then deletes nothing of
  host0's, and c1 -> c0 keeps working.
- A second agent started with host0's name (host1's machine, misconfigured) refuses to start.
- host0's host record overwritten or deleted in etcd is put back by host0's agent.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from overlay.lab import containers as ctr
from overlay.lab import host as steps
from overlay.lab.shell import add_netns, del_netns, in_netns, run
from overlay.lab.topology import Lab
from overlay.store import records as r
from overlay_fixtures import with_c0_and_c1


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return with_c0_and_c1(lab_factory(hosts=2))


def etcd_get(lab: Lab, key: str) -> tuple[bytes | None, int]:
    """(value, lease id) of `key`, read with etcdctl from the underlay."""
    out = json.loads(run(lab.etcdctl("get", key, "-w", "json"), netns=lab.underlay_ns).stdout)
    kvs = out.get("kvs") or []
    if not kvs:
        return None, 0
    return base64.b64decode(kvs[0]["value"]), int(kvs[0].get("lease", 0))


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def c0_state(lab: Lab) -> tuple[bytes | None, bytes | None]:
    c0 = lab.containers["c0"]
    return (etcd_get(lab, r.endpoint_key("my-net", c0["container_id"], "eth0"))[0],
            etcd_get(lab, r.ipam_prefix("my-net") + c0["ip"])[0])


def test_container_id_clash_names_the_other_host_and_its_del_touches_nothing(lab: Lab) -> None:
    c0, h1 = lab.containers["c0"], lab.host("host1")
    before = c0_state(lab)
    assert before[0] is not None and before[1] is not None
    name = f"{lab.prefix}-clash"
    add_netns(name)
    try:
        conf = ctr.plugin_netconf(ctr.read_conflist(h1, "my-net"))
        call = {"container_id": c0["container_id"], "netns": f"/var/run/netns/{name}",
                "ifname": "eth0", "netconf": conf, "host_dir": h1.dir}
        add = ctr.cni_exec(lab.cni_path, "ADD", **call)  # type: ignore[arg-type]
        assert add.returncode != 0
        error = add.json()
        assert error["code"] == 107 and "on host host0" in error["msg"], error
        delete = ctr.cni_exec(lab.cni_path, "DEL", **call)  # type: ignore[arg-type]
        assert delete.returncode == 0, delete.stdout
    finally:
        del_netns(name)
    assert c0_state(lab) == before  # host0's record and allocation, untouched
    assert "not deleting" in open(h1.agent_log).read()  # and host1 says why
    assert ctr.ping(lab.containers["c1"]["netns"], c0["ip"]).complete


def test_a_second_agent_with_host0s_name_refuses_to_start(lab: Lab) -> None:
    h0, h1 = lab.host("host0"), lab.host("host1")
    key = r.host_key("host0")
    before = etcd_get(lab, key)
    # host1's machine, misconfigured with host0's name: its own OVS, so its own agent id.
    config = os.path.join(h1.dir, "impostor.toml")
    with open(h1.agent_config) as fh:
        text = fh.read().replace('host = "host1"', 'host = "host0"')
    text = text.replace(f'socket = "{h1.socket}"', f'socket = "{h1.socket}.impostor"')
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("metrics_address"))
    with open(config, "w") as fh:
        fh.write(text + "\n")
    lab.stop_agent(h1)
    try:
        agent = os.path.join(steps.scripts_dir(), "overlay-agent")
        proc = subprocess.run(in_netns(h1.netns, [agent, "--config", config]),
                              capture_output=True, text=True, timeout=120)
    finally:
        lab.start_agent(h1)
    assert proc.returncode != 0
    assert "held by another live agent" in proc.stderr, proc.stderr[-2000:]
    after = etcd_get(lab, key)
    assert after[0] == before[0]  # host0's record as it was
    assert r.HostRecord.from_json(after[0] or b"").vtep == h0.vtep
    ctr.wait_converged(lab)
    assert eventually(lambda: ctr.ping(lab.containers["c1"]["netns"],
                                       lab.containers["c0"]["ip"]).complete)


@pytest.mark.parametrize("tamper", ["overwrite", "delete"])
def test_host0s_record_changed_by_someone_else_is_put_back(lab: Lab, tamper: str) -> None:
    key = r.host_key("host0")
    mine, lease = etcd_get(lab, key)
    assert mine is not None and lease
    forged = json.dumps({"host": "host0", "vtep": "172.31.0.99", "datapath": "netdev"})
    started = time.monotonic()
    if tamper == "overwrite":
        run(lab.etcdctl("put", key, forged), netns=lab.underlay_ns)
    else:
        run(lab.etcdctl("del", key), netns=lab.underlay_ns)
    back = eventually(lambda: etcd_get(lab, key) == (mine, lease))
    print(f"host0's record {tamper}: put back after {time.monotonic() - started:.2f} s")
    assert back
    assert ctr.ping(lab.containers["c1"]["netns"], lab.containers["c0"]["ip"]).complete
