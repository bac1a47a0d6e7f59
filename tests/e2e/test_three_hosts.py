"""The lab with HOSTS=3: every container reaches every other one across hosts."""

from __future__ import annotations

from collections.abc import Callable
from itertools import permutations

import pytest

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory(hosts=3)
    for i in range(3):
        out = ctr.add_container(lab, f"c{i}", f"host{i}")
        assert out.returncode == 0, out.stdout
    ctr.wait_converged(lab)
    return lab


def test_full_mesh_ping(lab: Lab) -> None:
    failures = []
    for src, dst in permutations(["c0", "c1", "c2"], 2):
        proc = run(["ping", "-c", "2", "-i", "0.2", "-W", "1", lab.containers[dst]["ip"]],
                   netns=lab.containers[src]["netns"], check=False)
        if proc.returncode != 0 or " 0% packet loss" not in proc.stdout:
            failures.append(f"{src}->{dst}: {proc.stdout.strip()}")
    assert not failures, "\n".join(failures)


def test_lab_cli_ping_and_down_cleans_everything(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(hosts=2)
    assert ctr.add_container(lab, "x0", "host0").returncode == 0
    assert ctr.add_container(lab, "x1", "host1").returncode == 0
    ns = lab.namespaces()
    assert len(ns) == 5  # underlay, two hosts, two containers
    lab.down()
    left = run(["ip", "netns", "list"]).stdout
    assert not [n for n in ns if n in left]
    assert run(["pgrep", "-f", lab.workdir], check=False).stdout == ""
