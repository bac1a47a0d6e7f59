import ipaddress
from itertools import islice

from overlay.ipam.pool import candidates, reserved
from overlay.model import AddressRange

ip = ipaddress.ip_address


def rng(subnet: str, start: str, end: str, gateway: str | None = None) -> AddressRange:
    return AddressRange(ipaddress.ip_network(subnet), ip(start), ip(end),
                        ip(gateway) if gateway else None)


def test_lowest_free_first_skipping_gateway_and_used() -> None:
    r = rng("10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.1")
    got = list(islice(candidates(r, {ip("10.0.0.2"), ip("10.0.0.4")}), 3))
    assert got == [ip("10.0.0.3"), ip("10.0.0.5"), ip("10.0.0.6")]


def test_network_and_broadcast_are_never_candidates() -> None:
    r = rng("10.0.0.0/30", "10.0.0.0", "10.0.0.3")
    assert list(candidates(r, set())) == [ip("10.0.0.1"), ip("10.0.0.2")]
    assert reserved(r) == {ip("10.0.0.0"), ip("10.0.0.3")}


def test_range_bounds_are_inclusive_and_exhaustion_yields_nothing() -> None:
    r = rng("10.0.0.0/24", "10.0.0.10", "10.0.0.12")
    assert list(candidates(r, set())) == [ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12")]
    assert list(candidates(r, {ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12")})) == []


def test_ipv6_range() -> None:
    r = rng("fd00::/64", "fd00::10", "fd00::11")
    assert list(candidates(r, set())) == [ip("fd00::10"), ip("fd00::11")]


def test_excluded_networks_are_jumped_not_walked() -> None:
    r = rng("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff")
    excluded = [ipaddress.ip_network("fd00::/65")]
    assert next(candidates(r, set(), excluded)) == ip("fd00::8000:0:0:0")
    assert list(candidates(r, set(), [ipaddress.ip_network("fd00::/64")])) == []


def test_small_ipv6_addresses_stay_ipv6() -> None:
    r = rng("::/120", "::1", "::3")
    assert list(candidates(r, set())) == [ip("::1"), ip("::2"), ip("::3")]
