"""The `ipam` section of a netconf for the built-in allocator: range sets, exclusions, routes.

Part of the netconf parser (netconf.py decides which IPAM the section names and calls in here);
the same rules as netconf.py: every refusal is a CniError naming the field, and what comes out
is the ground floor's model (overlay/model.py).
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

from overlay.errors import CniError, Code
from overlay.model import BUILTIN_IPAM, Address, AddressRange, IpamConfig, Network, Route


def _invalid(msg: str) -> CniError:
    return CniError(Code.INVALID_NETCONF, msg)


def parse_ip(value: Any, what: str) -> Address:
    # Only strings: ipaddress takes an int as an address too (`"gw": 5` would be 0.0.0.5), and
    # an IPv6 zone ("fe80::1%eth0") has no meaning in a netconf.
    try:
        if isinstance(value, str) and "%" not in value:
            return ipaddress.ip_address(value)
    except ValueError:
        pass
    raise _invalid(f"ipam: {what} {value!r} is not an IP address")


def parse_net(value: Any, what: str) -> Network:
    try:
        if isinstance(value, str) and "%" not in value:
            return ipaddress.ip_network(value, strict=False)
    except ValueError:
        pass
    raise _invalid(f"ipam: {what} {value!r} is not a CIDR such as 10.0.0.0/24")

def _parse_range(obj: Any) -> AddressRange:
    if not isinstance(obj, dict) or "subnet" not in obj:
        raise _invalid(f"ipam: a range needs a 'subnet', got {obj!r}")
    subnet = parse_net(obj["subnet"], "subnet")
    if subnet.num_addresses < (4 if subnet.version == 4 else 2):
        raise _invalid(f"ipam: subnet {subnet} is too small (at least a "
                       f"{'/30' if subnet.version == 4 else '/127'})")
    hosts_first = subnet.network_address + 1
    hosts_last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    start = parse_ip(obj["rangeStart"], "rangeStart") if "rangeStart" in obj else hosts_first
    end = parse_ip(obj["rangeEnd"], "rangeEnd") if "rangeEnd" in obj else hosts_last
    gateway = parse_ip(obj["gateway"], "gateway") if "gateway" in obj else None
    for what, addr in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if addr is not None and addr not in subnet:
            raise _invalid(f"ipam: {what} {addr} is outside subnet {subnet}")
    if start > end:  # type: ignore[operator]
        raise _invalid(f"ipam: rangeStart {start} is after rangeEnd {end}")
    return AddressRange(subnet, start, end, gateway)


def _parse_range_set(raw: Any, where: str) -> tuple[AddressRange, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _invalid(f"ipam: {where} is an empty range set")
    rset = tuple(_parse_range(r) for r in items)
    if len({r.subnet.version for r in rset}) > 1:
        raise _invalid(f"ipam: {where} mixes IPv4 and IPv6; use one range set per family")
    return rset


def _refuse_overlaps(range_sets: tuple[tuple[AddressRange, ...], ...]) -> None:
    """Every address in one range at most, as host-local requires: two range sets that share
    addresses would give one container two of them, and one set's gateway to another's pool."""
    ranges = sorted((r for rset in range_sets for r in rset),
                    key=lambda r: (r.subnet.version, int(r.start)))
    for r1, r2 in itertools.pairwise(ranges):  # sorted: an overlap shows between neighbours
        if r1.subnet.version == r2.subnet.version and int(r2.start) <= int(r1.end):
            raise _invalid(f"ipam: range {r1.start}-{r1.end} of {r1.subnet} overlaps with "
                           f"{r2.start}-{r2.end} of {r2.subnet}")


def parse_routes(raw: Any) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid(f"ipam.routes must be a list of {{\"dst\": ..., \"gw\": ...}}, got {raw!r}")
    routes = []
    for r in raw:
        if not isinstance(r, dict) or "dst" not in r:
            raise _invalid(f"ipam: a route needs a 'dst', got {r!r}")
        route = Route(parse_net(r["dst"], "route dst"),
                      parse_ip(r["gw"], "route gw") if "gw" in r else None)
        # The kernel takes an IPv4 route via an IPv6 gateway (RFC 5549), but as RTA_VIA, which
        # CHECK does not read back: refuse it rather than report it missing forever after.
        if route.gw is not None and route.gw.version != route.dst.version:
            raise _invalid(f"ipam: route to {route.dst} via {route.gw} mixes IPv4 and IPv6")
        routes.append(route)
    return tuple(routes)


def parse_builtin(obj: dict[str, Any]) -> IpamConfig:
    """The built-in allocator's section: range sets, exclusions and routes."""
    if "ranges" in obj:
        if not isinstance(obj["ranges"], list) or not obj["ranges"]:
            raise _invalid("ipam.ranges must be a non-empty list of range sets")
        range_sets = tuple(_parse_range_set(rset, f"ranges[{i}]")
                           for i, rset in enumerate(obj["ranges"]))
    elif "subnet" in obj:
        range_sets = (_parse_range_set(obj, "subnet"),)
    else:
        raise _invalid("ipam needs a 'subnet' (or 'ranges') to allocate addresses from")
    _refuse_overlaps(range_sets)
    exclude_raw = obj.get("exclude", [])
    if not isinstance(exclude_raw, list):
        raise _invalid(f"ipam.exclude must be a list of addresses or CIDRs, got {exclude_raw!r}")
    exclude = tuple(parse_net(e, "exclude entry") for e in exclude_raw)
    return IpamConfig(BUILTIN_IPAM, _with_gateway(range_sets), parse_routes(obj.get("routes")),
                      exclude, "routes" in obj)


def _with_gateway(range_sets: tuple[tuple[AddressRange, ...], ...]
                  ) -> tuple[tuple[AddressRange, ...], ...]:
    """One gateway per network: the first IPv4 range set's `gateway`, by default its first
    subnet's first address (as host-local defaults it), given to every range of that set on
    the same subnet, so that it is never handed out and every container routes through it.
    An IPv6 gateway is refused: the gateway and egress are IPv4 only (docs/cni-reference.md)."""
    for rset in range_sets:
        for rng in rset:
            if rng.gateway is not None and rng.gateway.version == 6:
                raise _invalid(f"ipam: gateway {rng.gateway}: the distributed gateway is IPv4 "
                               "only; leave gateway out of IPv6 ranges")
    out = list(range_sets)
    for i, rset in enumerate(range_sets):
        if rset[0].subnet.version != 4:
            continue
        first = rset[0].subnet
        gateway = next((r.gateway for r in rset if r.gateway is not None and r.subnet == first),
                       first.network_address + 1)
        out[i] = tuple(AddressRange(r.subnet, r.start, r.end, gateway)
                       if r.gateway is None and r.subnet == first else r for r in rset)
        break
    return tuple(out)
