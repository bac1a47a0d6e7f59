"""The iptables rules of one network's gateway (masquerade, conntrack zone, return marks).

Why iptables with conntrack rather than OVS ct(nat): the host's routing already knows how to
leave the host (default route, source address, neighbours), and the kernel's forwarding path
is much faster than the userspace datapath on this kind of machine (docs/architecture.md,
"Gateway", has the figures). OVS only has to hand the frames to the gateway port.

Every rule carries the comment `overlay-gw:<vni>`: `ensure` leaves a complete set alone and
otherwise replaces whatever rules carry the comment by the gateway's rules (so it is
idempotent, and rules from an older netconf go), `remove` deletes exactly the rules with that
comment, whatever their arguments were when they were written, and `missing` is what CHECK
and doctor report.

Why iptables-save + `iptables-restore --noflush`: the first container of a network on a host
creates its gateway on the ADD path, and one iptables process per rule (a check and an insert
each, 16 for a new gateway; 12 to remove one) cost 100-150 ms of ADD and DEL on a loaded
2-core machine. Now a new gateway costs one save (to find tagged rules: none) and one restore
(the inserts, committed atomically per table, so no packet sees half a gateway); a complete
one (agent restart) a save and one restore of -C checks; removal a save and one restore.

Per network (zone Z, mark M = Z << 16, port ovg<vni>, subnet S):
  raw     PREROUTING  -i port -j CT --zone-orig Z        egress tracked per network
  mangle  PREROUTING  -i port, NEW -> CONNMARK M         the connection remembers its network
  mangle  PREROUTING  REPLY, connmark M -> MARK M        replies route by table Z (kernel.py)
  mangle  OUTPUT      the same, for the host's own replies to a container
  filter  FORWARD     port -> another gateway port: DROP (networks never meet on the host);
                      port -> elsewhere and elsewhere -> port: ACCEPT (inserted first, so a
                      host whose FORWARD policy is DROP still forwards the overlay)
  filter  INPUT       port, not ICMP, not a reply (ESTABLISHED/RELATED): DROP, inserted
                      first. A container reaches the host's own listeners through its gateway
                      address (or any host address routed via the gateway): the agent's
                      metrics, sshd, etcd's client port where it runs. The gateway needs none:
                      it routes. Replies to the host's own connections and ICMP (ping the
                      gateway, path MTU) still pass.
  nat     POSTROUTING connmark M, not to S -> MASQUERADE  (only with ipMasq)

Separation between networks does not rest on the FORWARD rule alone: a rule another tool
inserts above ours would open it. isolation.py keeps them apart by routing, which comes first.
"""

from __future__ import annotations

import shlex
import subprocess

from overlay.errors import CniError, Code
from overlay.gateway.spec import MARK_MASK, PORT_PREFIX, GatewaySpec

Rule = tuple[str, str, list[str]]  # table, chain, match + target
TABLES = ("raw", "mangle", "filter", "nat")


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
        ("filter", "INPUT", ["-i", port, "!", "-p", "icmp", "-m", "conntrack", "!", "--ctstate",
                             "ESTABLISHED,RELATED", *tag, "-j", "DROP"]),
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


def _restore(script: str, what: str, *, check: bool = True) -> bool:
    """Feed `script` (iptables-save format) to one `iptables-restore --noflush`."""
    proc = subprocess.run(["iptables-restore", "-w", "5", "--noflush"], input=script,
                          capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise CniError(Code.NETLINK_FAILURE, f"iptables-restore could not {what}",
                       proc.stderr.strip())
    return proc.returncode == 0


def _line(verb: str, chain: str, args: list[str]) -> str:
    # iptables-restore splits on whitespace and knows double quotes only; our arguments
    # (interface names, marks, CIDRs, the comment) never contain either.
    assert not any(c in a for a in args for c in ' \t"\''), args
    return " ".join([verb, chain, *args])


def _tagged(saved: str, comment: str) -> dict[str, list[str]]:
    """table -> the `-A ...` lines of iptables-save output that carry exactly `comment`."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and comment in line and comment in shlex.split(line):
            out.setdefault(table, []).append(line)
    return out


def _script(deletions: dict[str, list[str]], insertions: list[Rule]) -> str:
    """One restore input: per table, delete the given `-A` lines, then add `insertions`."""
    tables = [t for t in TABLES if t in deletions or any(r[0] == t for r in insertions)]
    out = []
    for table in tables:
        out.append(f"*{table}")
        out += ["-D" + line[2:] for line in deletions.get(table, [])]
        for t, chain, args in insertions:
            if t == table:
                # FORWARD rules go first: they must beat a DROP another tool appended; the
                # INPUT drop must come before the ACCEPT a host firewall has for its services.
                out.append(_line("-I", f"{chain} 1", args) if chain in ("FORWARD", "INPUT")
                           else _line("-A", chain, args))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _save() -> str:
    proc = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CniError(Code.NETLINK_FAILURE, "iptables-save failed", proc.stderr.strip())
    return proc.stdout


def ensure(spec: GatewaySpec) -> None:
    """Make the rules of `spec` present. Rules already in place are left where they are
    (a restarted agent must not reorder or rewrite a working gateway); if any is missing,
    every rule tagged `spec.comment` is replaced by `rules(spec)`, atomically per table."""
    tagged = _tagged(_save(), spec.comment)
    if tagged and _all_present(spec):
        return
    _restore(_script(tagged, rules(spec)), f"write the rules of {spec.comment}")


def _all_present(spec: GatewaySpec) -> bool:
    """Are all of `spec`'s rules there (-C, which compares what the kernel holds, whatever
    order or spelling iptables-save would print)? One process: restore stops at the first
    rule that is missing."""
    checks = "".join(f"*{t}\n{_line('-C', c, a)}\nCOMMIT\n" for t, c, a in rules(spec))
    return _restore(checks, "check the rules", check=False)


def _present(rule: Rule) -> bool:
    table, chain, spec = rule
    return _iptables("-t", table, "-C", chain, *spec, check=False).returncode == 0


def missing(spec: GatewaySpec) -> list[str]:
    """The rules of `spec` that iptables does not have. Usually none: one process says so;
    only then is each rule checked on its own."""
    if _all_present(spec):
        return []
    return [f"iptables -t {t} {c} {' '.join(a)}" for t, c, a in rules(spec)
            if not _present((t, c, a))]


def remove(vni_comment: str) -> int:
    """Delete every rule tagged with `vni_comment`, in every table; returns how many."""
    tagged = _tagged(_save(), vni_comment)
    if not tagged:
        return 0
    _restore(_script(tagged, []), f"remove the rules of {vni_comment}")
    return sum(len(lines) for lines in tagged.values())


def all_tagged() -> dict[str, int]:
    """comment -> rule count for every overlay gateway rule on the host (doctor)."""
    found: dict[str, int] = {}
    for table in TABLES:
        for line in _iptables("-t", table, "-S").stdout.splitlines():
            words = shlex.split(line) if line.startswith("-A ") else []
            for i, word in enumerate(words[:-1]):
                if word == "--comment" and words[i + 1].startswith("overlay-gw:"):
                    found[words[i + 1]] = found.get(words[i + 1], 0) + 1
    return found
