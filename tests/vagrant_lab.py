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

    def sh(self, script: str, *, check: bool = True,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root in the VM; raise with its output if it fails and `check`."""
        argv = ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", self.name,
                "sudo bash -c " + shlex.quote(script)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: `{script}` exited {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, script: str) -> subprocess.Popen[str]:
        argv = ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", self.name,
                "sudo bash -c " + shlex.quote(script)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass
class VagrantLab:
    node1: Vm
    node2: Vm
    up_output: str
    driver: str
    timings: dict[str, float] = field(default_factory=dict)
