"""How overlay-install writes a file: only when its content differs, atomically, and noted.

Idempotence is the installer's contract (an init container runs it on every pod start, an
operator after every upgrade): a file whose content is already right is not touched, so its
mtime says when it last really changed, and a second run reports nothing changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the operator still has to do

    def note(self, path: Path, changed: bool) -> None:
        (self.changed if changed else self.unchanged).append(str(path))


def write_if_different(path: Path, content: str | bytes, mode: int = 0o644) -> bool:
    """True if the file was (re)written. A symlink in its place is replaced by the file."""
    data = content.encode() if isinstance(content, str) else content
    if not path.is_symlink() and path.is_file() and path.read_bytes() == data:
        if path.stat().st_mode & 0o777 == mode:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)  # atomic: a half-written unit or plugin is never seen by its reader
    return True


def link(path: Path, target: str) -> bool:
    """True if the symlink was (re)made to point at `target`."""
    if path.is_symlink() and os.readlink(path) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    return True
