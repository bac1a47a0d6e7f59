"""systemd for the Vagrant lab's VMs: units written only when they change, and enabled only when
they are not yet, because under TCG emulation every daemon-reload costs seconds to minutes.

    systemd_unit(...)        a unit's text: starts at boot, comes back after a crash
    install_unit(name, text) written (and systemd reloaded) only if it differs
    enable(unit), systemctl(...), unit_state(unit), journal_tail(unit)
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from overlay.lab.shell import run

UNIT_DIR = "/etc/systemd/system"


def systemd_unit(description: str, command: Sequence[str], *, after: Sequence[str] = (),
                 conflicts: Sequence[str] = (), notify: bool = False) -> str:
    """A service that starts at boot and comes back after a crash; `after` units are wanted too."""
    unit = ["[Unit]", f"Description={description}"]
    if after:
        unit += [f"After={' '.join(after)}", f"Wants={' '.join(after)}"]
    if conflicts:
        unit.append(f"Conflicts={' '.join(conflicts)}")
    unit += ["", "[Service]"]
    if notify:
        unit.append("Type=notify")
    unit += [f"ExecStart={shlex.join(command)}", "Restart=on-failure", "RestartSec=2",
             "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(unit)


def systemctl(*args: str, check: bool = True) -> int:
    # Generous: under TCG emulation on a loaded machine one daemon-reload took 30 s.
    return run(["systemctl", *args], check=check, timeout=600).returncode


def unit_state(unit: str) -> tuple[str, str]:
    """(is-enabled, is-active), e.g. ("disabled", "inactive"); both are read-only queries."""
    enabled = run(["systemctl", "is-enabled", unit], check=False, timeout=600).stdout.strip()
    active = run(["systemctl", "is-active", unit], check=False, timeout=600).stdout.strip()
    return enabled, active


def install_unit(name: str, text: str) -> bool:
    """Write the unit if it differs; says whether it did."""
    path = os.path.join(UNIT_DIR, name)
    if os.path.exists(path):
        with open(path) as fh:
            if fh.read() == text:
                return False
    with open(path, "w") as fh:
        fh.write(text)
    systemctl("daemon-reload")
    return True


def enable(unit: str) -> None:
    """Enable at boot only if not yet: `systemctl enable` reloads systemd every time (and runs
    update-rc.d for units with a SysV script), which cost minutes per call under TCG. The unit
    files themselves are loaded by the daemon-reload that install_unit/overlay.install run."""
    if unit_state(unit)[0] != "enabled":
        systemctl("enable", "--no-reload", unit)


def journal_tail(unit: str, lines: int = 30) -> str:
    return run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager"], check=False).stdout
