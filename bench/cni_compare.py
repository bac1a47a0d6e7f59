"""CNI ADD latency of two (or more) trees, alternated run by run: which one is faster?

A single run of bench/cni_latency.py on a shared 2-core machine moves by 30 % from one run to
the next, so two trees measured one after the other compare the load of two moments as much
as the trees. This runs cni_latency.py (this tree's copy of the script, the same for every
tree) once per tree per round, alternating which tree goes first, each with its own tree's
interpreter, hence its own tree's agent and plugin (`overlay` is an editable install in each
tree's .venv). Inside each run the plugins alternate call by call. It prints every run's
figures and, per tree, the median over its runs of each figure; the ratios to
bridge+host-local come from the same run as ours, so they carry less of the load than the
milliseconds do.

    python bench/cni_compare.py --tree before=/work/wt-before --tree after=. --runs 6 \\
        [-- --serial 20 --rounds 2]

Needs root, as cni_latency.py does; each tree needs its `make deps`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REF = "bridge+host-local"
# (label, key in the figures): what is printed for every run and summed up per tree
COLUMNS = (
    ("serial ADD ms", ("p50", "ovs serial add")),
    ("x ref", ("ratio", f"{REF} serial add")),
    ("first ADD ms", ("p50", "ovs first add")),
    ("x ref", ("ratio", f"{REF} first add")),
    ("par. ADD ms", ("p50", "ovs parallel add")),
    ("x ref", ("ratio", f"{REF} parallel add")),
    ("agent serial", ("agent", "serial")),
    ("agent first", ("agent", "first")),
    ("plugin alone", ("plugin", "")),
)


def figure(run: dict[str, Any], key: tuple[str, str]) -> float | None:
    kind, name = key
    if kind == "agent":
        value = run.get("steps", {}).get(name, {}).get("agent")
    elif kind == "plugin":
        value = run.get("plugin_start", {}).get("plugin")
    else:
        value = run.get(kind, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def one_run(name: str, tree: Path, extra: list[str], log_dir: str, index: int) -> dict[str, Any]:
    out = os.path.join(log_dir, f"{name}-{index}.json")
    log = os.path.join(log_dir, f"{name}-{index}.txt")
    python = tree / ".venv" / "bin" / "python"
    with open(log, "w") as fh:
        proc = subprocess.run([str(python), str(HERE / "cni_latency.py"), "--json", out, *extra],
                              stdout=fh, stderr=subprocess.STDOUT, cwd=tree, check=False)
    if proc.returncode != 0 or not os.path.exists(out):
        raise SystemExit(f"cni_compare: the run of {name} failed (exit {proc.returncode}); "
                         f"its output: {log}")
    with open(out) as fh:
        run: dict[str, Any] = json.load(fh)
    run["log"] = log
    return run


def row(label: str, values: list[float | None]) -> str:
    cells = "".join(f"{'-' if v is None else (f'{v:.2f}' if v < 10 else f'{v:.1f}'):>14}"
                    for v in values)
    return f"{label:<24}{cells}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                        help="a tree to measure (give two or more)")
    parser.add_argument("--runs", type=int, default=6, help="runs per tree")
    parser.add_argument("--keep", metavar="DIR", help="keep each run's output there")
    parser.add_argument("extra", nargs="*", help="after --: options of cni_latency.py")
    args = parser.parse_args(argv)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    log_dir = args.keep or tempfile.mkdtemp(prefix="overlay-compare-")
    os.makedirs(log_dir, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    print(row("run (tree, load)", [None] * 0) + "".join(f"{c:>14}" for c, _ in COLUMNS))
    for i in range(args.runs):
        order = trees if i % 2 == 0 else trees[::-1]  # who goes first alternates
        for name, tree in order:
            run = one_run(name, tree, args.extra, log_dir, i)
            runs[name].append(run)
            load = str(run.get("load", "?")).split()[0]
            print(row(f"{i + 1} {name} ({load})", [figure(run, k) for _, k in COLUMNS]),
                  flush=True)
    print(f"\nmedians over {args.runs} runs per tree:")
    for name, _ in trees:
        medians = []
        for _, key in COLUMNS:
            values = [v for v in (figure(r, key) for r in runs[name]) if v is not None]
            medians.append(statistics.median(values) if values else None)
        print(row(name, medians))
    print(f"\nevery run's output: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
