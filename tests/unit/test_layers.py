"""scripts/check_layers.py on a tiny tree of its own: floors, sizes and the allowlist."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_layers.py"


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "overlay"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(layers: ModuleType, root: Path, allow: str = "") -> list[str]:
    allowlist = root.parent / "allow.txt"
    allowlist.write_text(allow)
    problems: list[str] = layers.check(root, allowlist)
    return problems


def test_a_clean_tree_passes(layers: ModuleType, tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "model.py": "import ipaddress\n",
        "store/__init__.py": "",
        "store/etcd.py": "from overlay.model import X\nfrom overlay.store import records\n",
        "cni/__init__.py": "",
        "cni/service.py": "from overlay import model\nfrom overlay.store.etcd import Store\n"
                          "from . import netconf\n",
        "agent/__init__.py": "",
        "agent/main.py": "from overlay.cni import service\nfrom overlay.cli import trace\n",
    })
    assert run(layers, root) == []


@pytest.mark.parametrize("source", [
    "from overlay.cni.netconf import Route\n",                   # the case
    "from overlay import cni\n",                                 # a package by name
    "import overlay.cni.netconf\n",
    "def f() -> None:\n    from overlay.cni import netconf\n",   # a lazy import
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from overlay.cni import x\n",
    "from ..cni import netconf\n",                               # relative
])
def test_an_import_up_a_floor_fails(layers: ModuleType, tmp_path: Path, source: str) -> None:
    root = tree(tmp_path, {"store/__init__.py": "", "store/etcd.py": source})
    problems = run(layers, root)
    assert len(problems) == 1
    assert problems[0].startswith("overlay/store/etcd.py:") and "(cni, floor 4)" in problems[0]


def test_floors_beside_each_other_may_import_each_other(layers: ModuleType,
                                                        tmp_path: Path) -> None:
    root = tree(tmp_path, {"agent/__init__.py": "", "agent/a.py": "from overlay.cli import x\n",
                           "ipam/__init__.py": "", "ipam/p.py": "from overlay import dataplane\n"})
    assert run(layers, root) == []


def test_long_files_and_functions_fail(layers: ModuleType, tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    root = tree(tmp_path, {
        "big.py": "\n" * 401,
        "ok.py": f"def fine():\n{body[:-12]}\n",   # 60 lines with its def
        "fn.py": f"class C:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n",
    })
    problems = run(layers, root)
    assert problems == ["overlay/big.py: 401 lines (at most 400)",
                        "overlay/fn.py:2: C.long is 61 lines (at most 60)"]


def test_the_allowlist_excuses_and_must_stay_true(layers: ModuleType, tmp_path: Path) -> None:
    root = tree(tmp_path, {"big.py": "\n" * 401, "small.py": "x = 1\n"})
    assert run(layers, root, "# why\noverlay/big.py being split\n") == []
    assert run(layers, root, "overlay/big.py being split\noverlay/small.py was long\n") == [
        "allow.txt: overlay/small.py no longer violates anything; remove it from the list"]
    with pytest.raises(SystemExit, match="needs a reason"):
        run(layers, root, "overlay/big.py\n")


def test_the_real_tree_passes(layers: ModuleType) -> None:
    assert layers.main([]) == 0
