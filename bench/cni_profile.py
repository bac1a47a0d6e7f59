"""Where an ADD spends its time: the agent's steps (from its log) and the plugin's start-up.

Used by bench/cni_latency.py. Two sources, both measured in the same run as the latencies:

- the agent's log line of every ADD (overlay/cni/attach.py ends each with its Stopwatch:
  "ADD net owner -> ip mac port N (T ms: precheck a ipam b ...)"); per mode, the median of
  each step and of the agent's total, and per call the libcni figure minus the agent's total:
  what lies outside the agent's steps (the plugin's exec and start-up, its gRPC call, the
  agent's gRPC server and netconf parsing, the striped lock, libcni itself);
- the plugin alone: the installed `ovs` executable run for VERSION (answered without the
  agent), against a bare `python -IS -c pass` of the same interpreter, alternated call by
  call, so that what the plugin adds to the interpreter's own start shows.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# attach.py's log line; laps are "name ms" pairs, names may hold spaces ("network (rest)").
ADD_LINE = re.compile(r"^ADD (\S+) (\S+) -> .* \((\d+(?:\.\d+)?) ms: (.*)\)$")
LAP = re.compile(r"(.+?) (\d+(?:\.\d+)?)(?: |$)")
# gateway/manager.py's line for every gateway it installs (a first container on the host)
GATEWAY_LINE = re.compile(r"^gateway (\S+) installed \((\d+(?:\.\d+)?) ms: (.*)\)$")


@dataclass
class Steps:
    """The ADDs of one mode: each step's samples, the agent's totals, libcni minus agent."""

    laps: dict[str, list[float]] = field(default_factory=dict)
    totals: list[float] = field(default_factory=list)
    outside: list[float] = field(default_factory=list)


def _message(line: str) -> str:
    """The log message of a line, in the agent's JSON form or its text form."""
    if line.startswith("{"):
        try:
            msg = json.loads(line).get("msg", "")
            return msg if isinstance(msg, str) else ""
        except ValueError:
            return ""
    return line.split(": ", 1)[1].rstrip("\n") if ": " in line else ""


def agent_steps(log_lines: Iterable[str], mode_of: Mapping[str, str],
                libcni_ms: Mapping[str, float]) -> dict[str, Steps]:
    """Per mode, the steps of the ADDs whose container `mode_of` names (container id ->
    mode); `libcni_ms` (container id -> the libcni call's ms) gives what lies outside."""
    out: dict[str, Steps] = {}
    for line in log_lines:
        m = ADD_LINE.match(_message(line))
        if not m:
            continue
        container = m.group(2).split("/", 1)[0]
        mode = mode_of.get(container)
        if mode is None:
            continue
        steps = out.setdefault(mode, Steps())
        total = float(m.group(3))
        steps.totals.append(total)
        for name, ms in LAP.findall(m.group(4)):
            steps.laps.setdefault(name, []).append(float(ms))
        if container in libcni_ms:
            steps.outside.append(libcni_ms[container] - total)
    return out


def gateway_steps(log_lines: Iterable[str]) -> Steps:
    """The steps of every gateway installed (port, kernel, iptables, flows), from the log."""
    out = Steps()
    for line in log_lines:
        m = GATEWAY_LINE.match(_message(line))
        if m:
            out.totals.append(float(m.group(2)))
            for name, ms in LAP.findall(m.group(3)):
                out.laps.setdefault(name, []).append(float(ms))
    return out


def print_gateway(steps: Steps) -> None:
    if steps.totals:
        laps = "  ".join(f"{n} {statistics.median(v):.1f}" for n, v in steps.laps.items())
        print(f"  the gateway, when a first ADD installs it (n={len(steps.totals)}): "
              f"{statistics.median(steps.totals):.1f} = {laps}")


def print_steps(by_mode: Mapping[str, Steps], labels: Mapping[str, str],
                served_ms: Mapping[str, float], cpu_ms: Mapping[str, float]) -> None:
    """`served_ms`: per mode, the agent's mean time from receiving an ADD to answering it;
    `cpu_ms`: the agent process's CPU per ADD in that mode, its DEL included."""
    print("\nwhere our ADD's time goes (medians; the agent's steps from its log; ms):")
    for mode, label in labels.items():
        steps = by_mode.get(mode)
        if steps is None or not steps.totals:
            print(f"  {label}: no ADD lines in the agent's log")
            continue
        laps = "  ".join(f"{name} {statistics.median(v):.1f}" for name, v in steps.laps.items())
        print(f"  {label} (n={len(steps.totals)}): agent {statistics.median(steps.totals):.1f}"
              f" = {laps}")
        if steps.outside:
            print(f"    outside the agent's steps (libcni call - agent total): "
                  f"{statistics.median(steps.outside):.1f}")
        if mode in served_ms:
            print(f"    mean, ADD received -> answered in the agent's gRPC servicer: "
                  f"{served_ms[mode]:.1f}; agent's steps {statistics.mean(steps.totals):.1f}")
        if mode in cpu_ms:
            print(f"    the agent's CPU per ADD, its DEL included: {cpu_ms[mode]:.1f}")
    print("  (steps that run beside others show only the wait left when they are joined: "
          "'(rest)')")


def _run_ms(argv: list[str], stdin: bytes, env: Mapping[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, input=stdin, env=dict(env), capture_output=True, check=True, timeout=30)
    return (time.perf_counter() - start) * 1000


def plugin_start(plugin: str, n: int = 20) -> dict[str, Any]:
    """p50 of the plugin answering VERSION and of a bare start, alternated: for the Python
    plugin (a launcher, "#!python -IS") the interpreter's own start, for the compiled one an
    exec of /bin/true."""
    with open(plugin, "rb") as fh:
        head = fh.readline()
    if head.startswith(b"#!"):
        bare = [head[2:].split()[0].decode(), "-IS", "-c", "pass"]
        form = "python"
    else:
        bare, form = ["/bin/true"], "compiled"
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    conf = b'{"cniVersion": "1.0.0"}'
    plugin_ms, bare_ms = [], []
    for _ in range(n):
        plugin_ms.append(_run_ms([plugin], conf, env))
        bare_ms.append(_run_ms(bare, b"", env))
    return {"plugin": statistics.median(plugin_ms), "bare": statistics.median(bare_ms),
            "form": form, "bare_command": " ".join(bare)}


def print_plugin_start(figures: Mapping[str, Any]) -> None:
    print(f"\nthe plugin alone ({figures['form']}; VERSION, no agent; p50, a fork+exec from "
          f"Python included): {figures['plugin']:.1f} ms; a bare `{figures['bare_command']}`: "
          f"{figures['bare']:.1f} ms; the plugin's own share: "
          f"{figures['plugin'] - figures['bare']:.1f} ms")
