"""How a packet given to the gateway leaves the host, read from (fake) `ip` and `iptables -S`
output: the rules are the ones overlay/gateway/nat.py writes, as iptables -S prints them."""

from __future__ import annotations

import ipaddress

from overlay.cli.overlayctl import build_parser
from overlay.cli.trace_egress import RouteAnswer, follow, parse_route
from overlay.cli.trace_iptables import KPacket, parse, run_chain
from overlay.gateway import nat
from overlay.gateway.spec import GatewaySpec

RED = GatewaySpec("red", 42, ipaddress.IPv4Interface("10.0.0.1/24"), True, 1450)
BLUE = GatewaySpec("blue", 43, ipaddress.IPv4Interface("10.1.0.1/24"), True, 1450)


class FakeHost:
    """`ip route get` answers and `iptables -t T -S` output, as given."""

    def __init__(self, specs: list[GatewaySpec], *, routes: dict[tuple[str, str], RouteAnswer],
                 policy: str = "ACCEPT", extra: dict[str, list[str]] | None = None) -> None:
        self.routes, self.policy = routes, policy
        self.holes: dict[str, str] = {}
        self.lines: dict[str, list[str]] = {t: [] for t in nat.TABLES}
        for table, lines in (extra or {}).items():
            self.lines[table] += lines
        for spec in specs:
            for table, chain, args in nat.rules(spec):
                self.lines[table].append(" ".join(["-A", chain, *args]))

    def route_get(self, dst: str, *, src: str = "", iif: str = "") -> RouteAnswer:
        return self.routes.get((dst, iif), RouteAnswer(False, text="RTNETLINK answers: "
                                                       "Network is unreachable"))

    def blackhole(self, dst: str, iif: str) -> str:
        return self.holes.get(dst, "")

    def rules(self, table: str) -> str:
        policies = {"filter": ["INPUT", "FORWARD", "OUTPUT"],
                    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]}.get(
                        table, ["PREROUTING", "OUTPUT"])
        heads = [f"-P {c} {self.policy if c == 'FORWARD' else 'ACCEPT'}" for c in policies]
        return "\n".join(heads + self.lines[table]) + "\n"


OUT = {("172.31.0.254", "ovg42"): parse_route("172.31.0.254 from 10.0.0.2 dev br-phy"),
       ("172.31.0.254", ""): parse_route("172.31.0.254 dev br-phy src 172.31.0.1 uid 0"),
       ("10.1.0.2", "ovg42"): parse_route("10.1.0.2 from 10.0.0.2 dev ovg43")}


def leave(host: FakeHost, dst: str = "172.31.0.254") -> tuple[str, str, str]:
    e = follow(host, port="ovg42", vni=42, src="10.0.0.2", dst=dst, proto="tcp", dport=80)
    return e.how, e.address, e.why


def test_masqueraded_to_the_hosts_address_for_the_destination() -> None:
    how, address, why = leave(FakeHost([RED], routes=OUT))
    assert (how, address) == ("masqueraded", "172.31.0.1")
    assert why == "masqueraded to 172.31.0.1 (the host's source address for 172.31.0.254), " \
                  "leaves by br-phy"


def test_ip_masq_off_leaves_with_the_containers_address() -> None:
    plain = GatewaySpec("red", 42, RED.address, False, 1450)
    how, address, why = leave(FakeHost([plain], routes=OUT))
    assert (how, address) == ("not-masqueraded", "10.0.0.2")
    assert "no MASQUERADE rule tagged overlay-gw:42, as with ipMasq off" in why


def test_another_networks_gateway_port_is_refused_by_the_separation_rule() -> None:
    how, _, why = leave(FakeHost([RED, BLUE], routes=OUT), "10.1.0.2")
    assert how == "refused"
    assert why.startswith("refused by the network separation rule of VNI 42")
    assert "-A FORWARD -i ovg42 -o ovg+" in why and "-j DROP" in why


def test_another_network_blackholed_by_routing() -> None:
    host = FakeHost([RED, BLUE], routes={})
    host.holes["10.1.0.2"] = "blackhole 10.1.0.0/24 proto 79 in table 234881067 (rule 98: ...)"
    how, _, why = leave(host, "10.1.0.2")
    assert how == "refused" and why.startswith("refused by the network separation route of "
                                               "ovg42 (routing, before any iptables rule)")


def test_no_egress_route() -> None:
    how, _, why = leave(FakeHost([RED], routes=OUT), "192.0.2.1")
    assert how == "refused"
    assert why == "refused: no egress route on the host to 192.0.2.1 (RTNETLINK answers: " \
                  "Network is unreachable)"


def test_forward_policy_drop_decides_when_our_accept_rule_is_gone() -> None:
    host = FakeHost([RED], routes=OUT, policy="DROP")
    host.lines["filter"] = [line for line in host.lines["filter"] if "ACCEPT" not in line]
    how, _, why = leave(host)
    assert (how, why) == ("refused", "refused by the policy of the FORWARD chain: "
                                     "-P FORWARD DROP")
    # With our rules in place, the same policy changes nothing.
    assert leave(FakeHost([RED], routes=OUT, policy="DROP"))[0] == "masqueraded"


def test_an_earlier_foreign_rule_wins_and_unknown_matches_are_skipped() -> None:
    extra = {"filter": ["-A FORWARD -m addrtype --dst-type LOCAL -j ACCEPT",
                        "-A FORWARD -d 172.31.0.254/32 -p tcp -m tcp --dport 80 -j REJECT"]}
    host = FakeHost([RED], routes=OUT, extra=extra)
    e = follow(host, port="ovg42", vni=42, src="10.0.0.2", dst="172.31.0.254", proto="tcp",
               dport=80)
    assert (e.how, e.rule) == ("refused", extra["filter"][1])
    assert e.skipped == [extra["filter"][0]] and "1 rule(s) trace cannot judge" in e.summary()
    assert leave(FakeHost([RED], routes=OUT, extra=extra), "172.31.0.254")[0] == "refused"


def test_a_host_address_is_for_the_host() -> None:
    routes = {("172.31.0.1", "ovg42"): parse_route("local 172.31.0.1 from 10.0.0.2 dev lo")}
    assert leave(FakeHost([RED], routes=routes), "172.31.0.1")[0] == "to-host"


def test_connmark_set_in_mangle_is_what_masquerade_matches() -> None:
    mangle = parse("-P PREROUTING ACCEPT\n" + "\n".join(
        " ".join(["-A", c, *a]) for t, c, a in nat.rules(RED) if t == "mangle"))
    pkt = KPacket("ovg42", "br-phy", "10.0.0.2", "172.31.0.254", "tcp", 40000, 80)
    run_chain(mangle, "PREROUTING", pkt)
    assert (pkt.ctmark, pkt.mark) == (RED.mark, 0)  # MARK is for replies only


def test_json_before_or_after_the_command() -> None:
    parser = build_parser()
    for argv in (["--json", "hosts"], ["hosts", "--json"], ["status", "--json"],
                 ["--json", "trace", "a", "b"], ["trace", "a", "b", "--json"]):
        assert parser.parse_args(argv).json is True, argv
    assert parser.parse_args(["endpoints"]).json is False
