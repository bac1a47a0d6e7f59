"""Running commands, optionally inside a network namespace. Lab and test code only: the agent
itself never shells out to `ip`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


def in_netns(netns: str | None, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)


def run(cmd: Sequence[str], *, netns: str | None = None, check: bool = True,
        env: dict[str, str] | None = None, input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(in_netns(netns, cmd), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})},
                          input=input.decode() if input is not None else None)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(in_netns(netns, cmd))} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


def add_netns(name: str) -> None:
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], netns=name)


def del_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)
