#!/usr/bin/env python3
"""The house's floors, checked from the import graph: `make lint` runs this.

Each package of overlay/ stands on a floor, and a module may import from its own floor and the
ones below, never from above:

    errors, model, policy  <  store, ovs, netlink, wireguard  <  ipam, dataplane  <  gateway  <  cni
                   <  agent, cli, install, docker  <  lab

Every module is parsed with `ast` (nothing is imported or run), and every import in it counts:
at the top, inside a function (the lazy imports that keep start-up fast), under TYPE_CHECKING,
relative or absolute, and `from overlay import x` as the import of overlay.x. The same pass
flags a file over MAX_FILE_LINES lines and a function over MAX_FUNCTION_LINES lines.

Known exceptions live in scripts/layers-allow.txt, one "path[:function] reason" per line (an
import up a floor would be "path->package reason"; there is none, keep it so). The
list can only shrink: an entry that no longer violates anything is an error too, so the list
always says what is still to be fixed.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FLOORS = {"errors": 0, "model": 0, "policy": 0, "store": 1, "ovs": 1, "netlink": 1,
          "wireguard": 1, "ipam": 2, "dataplane": 2, "gateway": 3, "cni": 4, "agent": 5,
          "cli": 5, "install": 5, "docker": 5, "lab": 6}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


@dataclass(frozen=True)
class Violation:
    key: str      # what the allowlist names: "path", "path:function" or "path->package"
    message: str


def module_name(root: Path, path: Path) -> str:
    """overlay/cni/service.py -> overlay.cni.service; a package's __init__.py is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str | None:
    """The room a module of overlay belongs to: overlay.cni.v1.cni_pb2 -> "cni"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "overlay" else None


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) of every overlay import anywhere in the tree."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, `level` steps up
                base = here[:len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from overlay import cni`: cni is a package
                yield node.lineno, f"{target}.{alias.name}"


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def check_file(root: Path, path: Path) -> list[Violation]:
    rel = path.relative_to(root.parent).as_posix()
    text = path.read_text()
    tree = ast.parse(text, filename=rel)
    module = module_name(root, path)
    own = package_of(module) or "errors"  # overlay/__init__.py stands on the ground floor
    out = []
    seen = set()
    for line, target in imported_modules(tree, module, path.name == "__init__.py"):
        theirs = package_of(target)
        if theirs is None or theirs == own or theirs not in FLOORS or own not in FLOORS:
            continue
        if FLOORS[theirs] > FLOORS[own] and (line, theirs) not in seen:
            seen.add((line, theirs))  # `from overlay.cni.netconf import A, B`: once
            out.append(Violation(f"{rel}->{theirs}",
                                 f"{rel}:{line}: {own} (floor {FLOORS[own]}) imports {target} "
                                 f"({theirs}, floor {FLOORS[theirs]})"))
    lines = len(text.splitlines())
    if lines > MAX_FILE_LINES:
        out.append(Violation(rel, f"{rel}: {lines} lines (at most {MAX_FILE_LINES})"))
    for name, node in _functions(tree):
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
            out.append(Violation(f"{rel}:{name}", f"{rel}:{node.lineno}: {name} is {length} "
                                                  f"lines (at most {MAX_FUNCTION_LINES})"))
    return out


def read_allowlist(path: Path) -> dict[str, str]:
    """key -> reason; blank lines and # comments are skipped, and a reason is required."""
    allowed: dict[str, str] = {}
    if not path.exists():
        return allowed
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: {key} needs a reason after it")
        allowed[key] = reason.strip()
    return allowed


def check(root: Path, allowlist: Path) -> list[str]:
    """Every problem as a line for people; [] when the tree and the allowlist agree."""
    allowed = read_allowlist(allowlist)
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        if not path.name.endswith(GENERATED):
            found += check_file(root, path)
    problems = [v.message for v in found if v.key not in allowed]
    stale = set(allowed) - {v.key for v in found}
    problems += [f"{allowlist.name}: {key} no longer violates anything; remove it from the list"
                 for key in sorted(stale)]
    return problems


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=here.parent / "overlay")
    parser.add_argument("--allow", type=Path, default=here / "layers-allow.txt")
    args = parser.parse_args(argv)
    problems = check(args.root.resolve(), args.allow)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
