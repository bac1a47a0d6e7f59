from overlay.cli.doctor import cluster_problems
from overlay.store import records as r


def ep(cid: str, ips: list[str], network: str = "n", ipam: str = "overlay") -> tuple[str, bytes]:
    rec = r.EndpointRecord(network=network, container_id=cid, ifname="eth0", host="h0", vni=42,
                           ips=ips, mac="02:00:00:00:00:01", port="ovlx", netns="/x", ipam=ipam)
    return rec.key, rec.to_json().encode()


def alloc(ip: str, cid: str, network: str = "n") -> tuple[str, bytes]:
    return f"{r.ipam_prefix(network)}{ip}", r.Holder(f"{cid}/eth0", "h0").to_json().encode()


def test_consistent_state_has_no_problems() -> None:
    state = dict([ep("a", ["10.0.0.1/24"]), alloc("10.0.0.1", "a"),
                  ep("b", ["10.0.0.2/24", "fd00::2/64"]), alloc("10.0.0.2", "b"),
                  alloc("fd00::2", "b"), ep("c", ["10.9.0.5/24"], ipam="host-local")])
    assert cluster_problems(state) == []


def test_leaks_duplicates_and_unallocated_addresses_are_named() -> None:
    state = dict([ep("a", ["10.0.0.1/24"]), alloc("10.0.0.1", "a"),
                  ep("b", ["10.0.0.1/24"]),       # same address as a
                  alloc("10.0.0.7", "gone"),      # nobody uses it
                  ep("c", ["10.0.0.3/24"])])      # never allocated
    problems = "\n".join(cluster_problems(state))
    assert "n: 10.0.0.1 is used by 2 endpoints: a/eth0, b/eth0" in problems
    assert "10.0.0.7 is allocated to gone/eth0, which has no endpoint using it" in problems
    assert "n/c/eth0: 10.0.0.3 is not allocated to it (held by nobody)" in problems
