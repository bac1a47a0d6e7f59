"""What the VM tier's tests hold: the two Vagrant VMs, reached over plain ssh with the config
`vagrant ssh-config` prints (one ssh is far cheaper than one `vagrant ssh`, a Ruby start-up)."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Vm:
    name: str
    ssh_config: Path

    # One master connection per VM, reused by every command: a fresh ssh login took 12 s
    # under TCG here. Started with its output on /dev/null (a master that inherited a
    # captured pipe would keep the capture open), closed by close().
    def ssh(self, *args: str) -> list[str]:
        control = self.ssh_config.parent / f"cm-{self.name}"
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes",
                "-o", f"ControlPath={control}", *args, self.name]

    def open(self) -> None:
        subprocess.run(self.ssh("-fNM", "-o", "ControlPersist=yes"), check=True, timeout=300,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def close(self) -> None:
        subprocess.run(self.ssh("-O", "exit"), check=False, timeout=60, capture_output=True)

    def argv(self, script: str) -> list[str]:
        return [*self.ssh(), "sudo bash -c " + shlex.quote(script)]

    def sh(self, script: str, *, check: bool = True,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root in the VM; raise with its output if it fails and `check`."""
        proc = subprocess.run(self.argv(script), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: `{script}` exited {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(script), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)


@dataclass
class VagrantLab:
    node1: Vm
    node2: Vm
    up_output: str
    driver: str
    timings: dict[str, float] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
