"""The container's route for a destination: longest prefix, on-link wins a tie."""

from __future__ import annotations

from overlay.cli.trace_route import pick


def test_longest_prefix_and_on_link() -> None:
    prefixes = ("10.0.0.2/24", "fd00::2/64")
    routes = (("0.0.0.0/0", "10.0.0.1"), ("192.168.0.0/16", "10.0.0.7"), ("10.0.0.0/24", ""))
    hop = pick(prefixes, routes, "10.0.0.5")
    assert hop is not None and (hop.ip, hop.routed) == ("10.0.0.5", False)
    hop = pick(prefixes, routes, "192.168.3.4")
    assert hop is not None and (hop.route, hop.ip, hop.routed) == \
        ("192.168.0.0/16 via 10.0.0.7", "10.0.0.7", True)
    hop = pick(prefixes, routes, "8.8.8.8")
    assert hop is not None and hop.route == "default via 10.0.0.1"
    hop = pick(prefixes, routes, "fd00::9")
    assert hop is not None and (hop.ip, hop.routed) == ("fd00::9", False)
    assert pick(prefixes, routes, "2001:db8::1") is None  # no IPv6 default route
    assert pick(("10.0.0.2/24",), (), "172.31.0.254") is None
