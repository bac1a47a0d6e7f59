"""The iptables rules of one network's gateway (masquerade, conntrack zone, return marks).

Why iptables with conntrack rather than OVS ct(nat): the host's routing already knows how to
leave the host (default route, source address, neighbours), and the kernel's forwarding path
is much faster than the userspace datapath on this kind of machine (docs/architecture.md,
"Gateway", has the figures). OVS only has to hand the frames to the gateway port.

Every rule carries the comment `overlay-gw:<vni>`: `ensure` adds what is missing (iptables -C
first, so it is idempotent), `remove` deletes exactly the rules with that comment, whatever
their arguments were when they were written, and `missing` is what CHECK and doctor report.

Per network (zone Z, mark M = Z << 16, port ovg<vni>, subnet S):
  raw     PREROUTING  -i port -j CT --zone-orig Z        egress tracked per network
  mangle  PREROUTING  -i port, NEW -> CONNMARK M         the connection remembers its network
  mangle  PREROUTING  REPLY, connmark M -> MARK M        replies route by table Z (kernel.py)
  mangle  OUTPUT      the same, for the host's own replies to a container
  filter  FORWARD     port -> another gateway port: DROP (networks never meet on the host);
                      port -> elsewhere and elsewhere -> port: ACCEPT (inserted first, so a
                      host whose FORWARD policy is DROP still forwards the overlay)
  nat     POSTROUTING connmark M, not to S -> MASQUERADE  (only with ipMasq)
"""

from __future__ import annotations

import shlex
import subprocess

from overlay.errors import CniError, Code
from overlay.gateway.spec import MARK_MASK, PORT_PREFIX, GatewaySpec

Rule = tuple[str, str, list[str]]  # table, chain, match + target


def rules(spec: GatewaySpec) -> list[Rule]:
    port, mark = spec.port, f"{spec.mark:#x}/{MARK_MASK:#x}"
    tag = ["-m", "comment", "--comment", spec.comment]
    restore = ["-m", "conntrack", "--ctdir", "REPLY", "-m", "connmark", "--mark", mark, *tag,
               "-j", "MARK", "--set-xmark", mark]
    out: list[Rule] = [
        ("raw", "PREROUTING", ["-i", port, *tag, "-j", "CT", "--zone-orig", str(spec.zone)]),
        ("mangle", "PREROUTING", ["-i", port, "-m", "conntrack", "--ctstate", "NEW", *tag,
                                  "-j", "CONNMARK", "--set-xmark", mark]),
        ("mangle", "PREROUTING", restore),
        ("mangle", "OUTPUT", restore),
        ("filter", "FORWARD", ["-i", port, "-o", PORT_PREFIX + "+", *tag, "-j", "DROP"]),
        ("filter", "FORWARD", ["-i", port, "!", "-o", PORT_PREFIX + "+", *tag, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["!", "-i", PORT_PREFIX + "+", "-o", port, *tag, "-j", "ACCEPT"]),
    ]
    if spec.masquerade:
        out.append(("nat", "POSTROUTING", ["-m", "connmark", "--mark", mark,
                                           "!", "-d", str(spec.subnet), *tag,
                                           "-j", "MASQUERADE"]))
    return out


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True,
                          timeout=30)
    if check and proc.returncode != 0:
        raise CniError(Code.NETLINK_FAILURE, f"iptables {' '.join(args)} failed",
                       proc.stderr.strip())
    return proc


def _present(rule: Rule) -> bool:
    table, chain, spec = rule
    return _iptables("-t", table, "-C", chain, *spec, check=False).returncode == 0


def ensure(spec: GatewaySpec) -> None:
    for rule in rules(spec):
        if not _present(rule):
            table, chain, args = rule
            # FORWARD rules go first: they must beat a DROP another tool appended.
            verb = ["-I", chain, "1"] if chain == "FORWARD" else ["-A", chain]
            _iptables("-t", table, *verb, *args)


def missing(spec: GatewaySpec) -> list[str]:
    return [f"iptables -t {t} {c} {' '.join(a)}" for t, c, a in rules(spec)
            if not _present((t, c, a))]


def remove(vni_comment: str) -> int:
    """Delete every rule tagged with `vni_comment`, in every table; returns how many."""
    removed = 0
    for table in ("raw", "mangle", "filter", "nat"):
        for line in listed(table, vni_comment):
            args = shlex.split(line)
            _iptables("-t", table, "-D", *args[1:], check=False)
            removed += 1
    return removed


def listed(table: str, vni_comment: str) -> list[str]:
    """Rules of `table` tagged with exactly this comment, as `iptables -S` prints them."""
    out = _iptables("-t", table, "-S").stdout
    return [line for line in out.splitlines()
            if line.startswith("-A ") and vni_comment in shlex.split(line)]


def all_tagged() -> dict[str, int]:
    """comment -> rule count for every overlay gateway rule on the host (doctor)."""
    found: dict[str, int] = {}
    for table in ("raw", "mangle", "filter", "nat"):
        for line in _iptables("-t", table, "-S").stdout.splitlines():
            words = shlex.split(line) if line.startswith("-A ") else []
            for i, word in enumerate(words[:-1]):
                if word == "--comment" and words[i + 1].startswith("overlay-gw:"):
                    found[words[i + 1]] = found.get(words[i + 1], 0) + 1
    return found
