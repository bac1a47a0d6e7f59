"""After the gateway port: how a container's packet leaves the host, read from the host itself.

A frame the switch hands to a network's gateway port (ovg<vni>) is the host kernel's from
there on. Trace follows it the way the kernel does, through the host's real state (run it on
the host, in the host's network namespace):

1. the routing decision: `ip route get DST from SRC iif PORT` (no route, or an unreachable /
   blackhole / prohibit route: refused there; a local address: it is for the host itself);
2. mangle PREROUTING (the gateway's CONNMARK: which network the connection belongs to);
3. filter FORWARD: ACCEPT, or DROP/REJECT by a rule (the network separation rule drops what
   would go into another network's gateway port) or by the chain's policy;
4. nat POSTROUTING: MASQUERADE (the source becomes the host's address for DST, which
   `ip route get DST` names), SNAT (to the rule's address), or nothing: with ipMasq off the
   network has no MASQUERADE rule and the packet leaves with the container's address.

Rules come from `iptables -S` per table (trace_iptables walks them); nothing is taken from the
netconf or the agent's intent, so a rule someone removed or added shows up in the verdict.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from overlay.cli import trace_iptables as ipt


@dataclass(frozen=True)
class RouteAnswer:
    ok: bool
    kind: str = "unicast"   # unicast | local | unreachable | blackhole | prohibit | ...
    dev: str = ""
    via: str = ""
    src: str = ""
    text: str = ""          # ip's own line, or its error


class HostState(Protocol):
    """What the host kernel says; the real one runs `ip` and `iptables`, tests use a fake."""

    def route_get(self, dst: str, *, src: str = "", iif: str = "") -> RouteAnswer: ...

    def rules(self, table: str) -> str: ...

    def blackhole(self, dst: str, iif: str) -> str:
        """The blackhole route that swallows `dst` from `iif` (and the rule leading to its
        table), or "": the routing-based network separation (overlay/gateway/isolation.py)."""
        ...


ROUTE_KINDS = ("unicast", "local", "broadcast", "multicast", "unreachable", "blackhole",
               "prohibit", "throw", "nat", "anycast")


def _holds(net: str, addr: str) -> bool:
    return ipt._in_net(net, addr)


def parse_route(text: str) -> RouteAnswer:
    """One `ip -o route get` line: "[kind] DST [via GW] dev DEV [src SRC] ..."."""
    words = text.split()
    kind = words[0] if words and words[0] in ROUTE_KINDS else "unicast"
    value = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("dev", "via", "src")}
    return RouteAnswer(True, kind, value.get("dev", ""), value.get("via", ""),
                       value.get("src", ""), text.strip())


class Kernel:
    """This host's kernel, through `ip` and `iptables` (read-only commands)."""

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]} did not run: {exc}")

    def route_get(self, dst: str, *, src: str = "", iif: str = "") -> RouteAnswer:
        cmd = ["ip", "-o", "route", "get", dst]
        cmd += ["from", src] if src else []
        cmd += ["iif", iif] if iif else []
        proc = self._run(cmd)
        if proc.returncode != 0:
            return RouteAnswer(False, text=proc.stderr.strip() or f"{' '.join(cmd)} failed")
        return parse_route(proc.stdout.splitlines()[0] if proc.stdout else "")

    def blackhole(self, dst: str, iif: str) -> str:
        rules = self._run(["ip", "-o", "rule", "show", "iif", iif]).stdout.splitlines()
        for rule in rules:
            words = rule.split()
            table = words[words.index("lookup") + 1] if "lookup" in words[:-1] else ""
            if not table:
                continue
            routes = self._run(["ip", "-o", "route", "show", "table", table, "type",
                                "blackhole"]).stdout.splitlines()
            for route in routes:
                net = route.split()[1] if len(route.split()) > 1 else ""
                if net and _holds(net, dst):
                    return f"{route.strip()} in table {table} (rule {' '.join(words)})"
        return ""

    def rules(self, table: str) -> str:
        proc = self._run(["iptables", "-w", "5", "-t", table, "-S"])
        if proc.returncode != 0:
            raise RuntimeError(f"iptables -t {table} -S failed: {proc.stderr.strip()}")
        return proc.stdout


@dataclass
class Egress:
    how: str                 # masqueraded | snat | not-masqueraded | refused | to-host
    address: str = ""        # the source address it leaves the host with
    dev: str = ""            # the interface it leaves by
    via: str = ""            # the next hop on the host's side
    rule: str = ""           # what decided: an iptables rule, a policy, a route
    why: str = ""            # in words
    skipped: list[str] = field(default_factory=list)  # rules trace could not judge

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        out = f"{self.why}"
        if self.skipped:
            out += f" ({len(self.skipped)} rule(s) trace cannot judge were skipped)"
        return out


def _rule_words(outcome: ipt.Outcome, table: ipt.Table, chain: str) -> str:
    if outcome.rule is not None:
        return outcome.rule.text
    return f"-P {chain} {table.policies.get(chain, 'ACCEPT')}"


def _refusal(outcome: ipt.Outcome, rule: str, dev: str) -> str:
    comment = outcome.rule.comment if outcome.rule else ""
    if comment.startswith("overlay-gw:") and dev.startswith("ovg"):
        return (f"refused by the network separation rule of VNI {comment.split(':')[1]} (it "
                f"would enter another network's gateway port {dev}; networks never meet on "
                f"the host): {rule}")
    if outcome.rule is None:
        return f"refused by the policy of the FORWARD chain: {rule}"
    return f"refused by a FORWARD rule: {rule}"


def follow(state: HostState, *, port: str, vni: int, src: str, dst: str, proto: str,
           sport: int = 0, dport: int = 0) -> Egress:
    """The packet (src -> dst) entering the host from gateway port `port`; see the module
    docstring for the steps."""
    fwd = state.route_get(dst, src=src, iif=port)
    if not fwd.ok or fwd.kind == "blackhole":
        hole = state.blackhole(dst, port)
        if hole:
            return Egress("refused", rule=hole,
                          why=f"refused by the network separation route of {port} (routing, "
                              f"before any iptables rule): {hole}")
    if not fwd.ok or fwd.kind in ("unreachable", "blackhole", "prohibit", "throw"):
        return Egress("refused", rule=fwd.text,
                      why=f"refused: no egress route on the host to {dst} ({fwd.text})")
    if fwd.kind == "local":
        return Egress("to-host", dev=fwd.dev, rule=fwd.text,
                      why=f"{dst} is an address of this host: the packet goes to the host "
                          "itself (its INPUT chain), not out")
    pkt = ipt.KPacket(port, fwd.dev, src, dst, proto, sport, dport)
    mangle = ipt.parse(state.rules("mangle"))
    skipped = ipt.run_chain(mangle, "PREROUTING", pkt).skipped
    filt = ipt.parse(state.rules("filter"))
    decision = ipt.run_chain(filt, "FORWARD", pkt)
    skipped += decision.skipped
    verdict = decision.target or filt.policies.get("FORWARD", "ACCEPT")
    rule = _rule_words(decision, filt, "FORWARD")
    if verdict in ("DROP", "REJECT"):
        return Egress("refused", dev=fwd.dev, via=fwd.via, rule=rule,
                      why=_refusal(decision, rule, fwd.dev), skipped=skipped)
    nat = ipt.parse(state.rules("nat"))
    post = ipt.run_chain(nat, "POSTROUTING", pkt)
    skipped += post.skipped
    leave = f"leaves by {fwd.dev}" + (f" via {fwd.via}" if fwd.via else "")
    if post.target == "MASQUERADE":
        address = state.route_get(dst).src
        return Egress("masqueraded", address, fwd.dev, fwd.via, post.rule.text if post.rule
                      else "", f"masqueraded to {address or '?'} (the host's source address "
                      f"for {dst}), {leave}", skipped)
    if post.target == "SNAT":
        opts = post.options
        address = next((opts[i + 1] for i in range(len(opts) - 1)
                        if opts[i] == "--to-source"), "?")
        return Egress("snat", address, fwd.dev, fwd.via, post.rule.text if post.rule else "",
                      f"source NATed to {address}, {leave}", skipped)
    return Egress("not-masqueraded", src, fwd.dev, fwd.via, _rule_words(post, nat, "POSTROUTING"),
                  f"not masqueraded: {leave} with the container's own address {src} (no NAT "
                  f"rule in POSTROUTING matched; the network has no MASQUERADE rule tagged "
                  f"overlay-gw:{vni}, as with ipMasq off), so replies need a route back to "
                  "it", skipped)
