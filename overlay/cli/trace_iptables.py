"""Walking one packet through the host's iptables rules as `iptables -S` prints them (pure).

Trace reads the rules the kernel holds, not the ones the agent meant to write: a rule someone
deleted, a FORWARD policy of DROP, a MASQUERADE that is missing because ipMasq is off, or
another tool's rule placed before ours all change where a container's packet goes, and only
the real rule set shows it.

This is a small evaluator, not iptables: it knows the matches our gateway and the usual host
firewalls use (interfaces with `+`, addresses, protocol and ports, conntrack state and
direction, connmark, mark, comment) and the common targets. A rule with a match it does not
know is not guessed at: it is skipped and listed in `Outcome.skipped`, so the verdict says
which rules it could not judge. The packet is the first of a new connection in its original
direction (what a trace asks about).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

TERMINATING = {"ACCEPT", "DROP", "REJECT", "MASQUERADE", "SNAT", "DNAT", "REDIRECT"}
MAX_DEPTH = 16  # user chains jumping into each other: deeper than any real rule set


@dataclass
class KPacket:
    """What the kernel knows about the packet at a hook."""
    iif: str
    oif: str
    src: str
    dst: str
    proto: str             # icmp | tcp | udp
    sport: int = 0
    dport: int = 0
    ctmark: int = 0
    mark: int = 0


@dataclass(frozen=True)
class Rule:
    chain: str
    args: tuple[str, ...]
    text: str              # the line as iptables -S printed it

    @property
    def comment(self) -> str:
        args = self.args
        return next((args[i + 1] for i in range(len(args) - 1) if args[i] == "--comment"), "")

    @property
    def target(self) -> tuple[str, tuple[str, ...]]:
        for i, a in enumerate(self.args):
            if a in ("-j", "-g") and i + 1 < len(self.args):
                return self.args[i + 1], self.args[i + 2:]
        return "", ()


@dataclass
class Table:
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Table:
    table = Table()
    for line in text.splitlines():
        words = shlex.split(line) if line.startswith("-") else []
        if len(words) >= 3 and words[0] == "-P":
            table.policies[words[1]] = words[2]
            table.chains.setdefault(words[1], [])
        elif len(words) >= 2 and words[0] == "-N":
            table.chains.setdefault(words[1], [])
        elif len(words) >= 2 and words[0] == "-A":
            table.chains.setdefault(words[1], []).append(Rule(words[1], tuple(words[2:]), line))
    return table


@dataclass
class Outcome:
    target: str                 # ACCEPT, DROP, MASQUERADE, ... or "" (the chain fell through)
    rule: Rule | None = None    # None: the chain's policy (or nothing) decided
    options: tuple[str, ...] = ()
    skipped: list[str] = field(default_factory=list)


def _iface(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _in_net(cidr: str, addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def _masked(value: str, current: int) -> bool:
    v, _, m = value.partition("/")
    mask = int(m, 0) if m else 0xFFFFFFFF
    return current & mask == int(v, 0)


def _ports(value: str, port: int) -> bool:
    for part in value.split(","):
        low, _, high = part.partition(":")
        if int(low or 0) <= port <= int(high or low or 65535):
            return True
    return False


def _test(option: str, value: str, pkt: KPacket) -> bool | None:
    """One match; None: not a match this evaluator knows."""
    tests: dict[str, Callable[[], bool]] = {
        "-i": lambda: _iface(value, pkt.iif), "-o": lambda: _iface(value, pkt.oif),
        "-s": lambda: _in_net(value, pkt.src), "-d": lambda: _in_net(value, pkt.dst),
        "-p": lambda: value in ("all", pkt.proto),
        "--dport": lambda: _ports(value, pkt.dport), "--dports": lambda: _ports(value, pkt.dport),
        "--sport": lambda: _ports(value, pkt.sport), "--sports": lambda: _ports(value, pkt.sport),
        "--ctstate": lambda: "NEW" in value.split(","), "--state": lambda: "NEW" in value.split(","),
        "--ctdir": lambda: value == "ORIGINAL",
        "--comment": lambda: True,
    }
    test = tests.get(option)
    return test() if test else None


def matches(rule: Rule, pkt: KPacket) -> bool | None:
    """Does every match of `rule` hold? None: it has a match this evaluator cannot judge."""
    args, i, negate, module = rule.args, 0, False, ""
    while i < len(args):
        a = args[i]
        if a in ("-j", "-g"):
            break
        if a == "!":
            negate, i = True, i + 1
            continue
        if a == "-m" and i + 1 < len(args):
            module, i = args[i + 1], i + 2
            continue
        if i + 1 >= len(args):
            return None
        value = args[i + 1]
        if a == "--mark" and module in ("connmark", "mark"):
            result: bool | None = _masked(value, pkt.ctmark if module == "connmark" else pkt.mark)
        else:
            result = _test(a, value, pkt)
        if result is None:
            return None
        if result == negate:
            return False
        negate, i = False, i + 2
    return True


def _xmark(options: tuple[str, ...], current: int) -> int:
    """The new mark of MARK/CONNMARK --set-xmark V/M or --set-mark V[/M]."""
    for i, opt in enumerate(options[:-1]):
        value, _, m = options[i + 1].partition("/")
        mask = int(m, 0) if m else 0xFFFFFFFF
        if opt == "--set-xmark":
            return (current & ~mask & 0xFFFFFFFF) ^ int(value, 0)
        if opt == "--set-mark":
            return (current & ~mask & 0xFFFFFFFF) | int(value, 0)
    return current


def run_chain(table: Table, chain: str, pkt: KPacket, _depth: int = 0) -> Outcome:
    """The packet through `chain` (and the chains it jumps to). MARK and CONNMARK change
    `pkt` as the kernel would; the first terminating target decides; falling off a built-in
    chain leaves it to the policy (Outcome.target "" and the policy in `table.policies`)."""
    skipped: list[str] = []
    for rule in table.chains.get(chain, []):
        hit = matches(rule, pkt)
        if hit is None:
            skipped.append(rule.text)
            continue
        if not hit:
            continue
        target, options = rule.target
        if target == "MARK":
            pkt.mark = _xmark(options, pkt.mark)
        elif target == "CONNMARK":
            pkt.ctmark = _xmark(options, pkt.ctmark)
        elif target == "RETURN":
            return Outcome("", None, (), skipped)
        elif target in TERMINATING:
            return Outcome(target, rule, options, skipped)
        elif target in table.chains and _depth < MAX_DEPTH:
            inner = run_chain(table, target, pkt, _depth + 1)
            skipped += inner.skipped
            if inner.target:
                return Outcome(inner.target, inner.rule, inner.options, skipped)
    return Outcome("", None, (), skipped)
