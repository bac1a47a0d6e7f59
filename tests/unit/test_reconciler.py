import json

from overlay.agent.reconciler import remote_endpoints
from overlay.dataplane.flows import RemoteEndpoint
from overlay.store import records as r


def ep(host: str, ip: str, mac: str, vni: int = 42) -> tuple[str, bytes]:
    rec = r.EndpointRecord(network="n", container_id=f"c-{ip}", ifname="eth0", host=host,
                           vni=vni, ips=[f"{ip}/24"], mac=mac, port="ovlx", netns="/x")
    return rec.key, rec.to_json().encode()


def host(name: str, vtep: str) -> tuple[str, bytes]:
    return r.host_key(name), r.HostRecord(name, vtep, "netdev").to_json().encode()


def test_remote_endpoints_of_live_hosts_only() -> None:
    state = dict([host("h0", "172.31.0.1"), host("h1", "172.31.0.2"),
                  ep("h0", "10.0.0.1", "02:00:00:00:00:01"),
                  ep("h1", "10.0.0.2", "02:00:00:00:00:02"),
                  ep("h2", "10.0.0.3", "02:00:00:00:00:03")])  # h2 has no live host key
    assert remote_endpoints(state, "h0") == [
        RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2")]


def test_malformed_records_are_skipped() -> None:
    state = dict([host("h1", "172.31.0.2"), ep("h1", "10.0.0.2", "02:00:00:00:00:02")])
    state[r.ENDPOINTS + "n/bad/eth0"] = b"{not json"
    state[r.HOSTS + "broken"] = b"[]"
    assert len(remote_endpoints(state, "h0")) == 1


def test_hostile_records_never_reach_the_flow_table() -> None:
    state = dict([host("h1", "172.31.0.2"), ep("h1", "10.0.0.2", "02:00:00:00:00:02")])
    for i, bad in enumerate([
        {"vni": "42"}, {"vni": 0}, {"mac": "02:00:00:00:00:03,output:1"},
        {"mac": "02:00:00:00:00:03\ntable=0,actions=NORMAL"}, {"ips": ["10.0.0.9,in_port=1"]},
    ]):
        key, value = ep("h1", f"10.0.0.{10 + i}", "02:00:00:00:00:03")
        record = {**json.loads(value), **bad}
        state[key] = json.dumps(record).encode()
    state[r.HOSTS + "h2"] = json.dumps({"host": "h2", "vtep": "1.2.3.4,output:9",
                                        "datapath": "netdev"}).encode()
    assert [e.mac for e in remote_endpoints(state, "h0")] == ["02:00:00:00:00:02"]
