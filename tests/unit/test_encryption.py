"""Encrypted networks without a kernel: keys, peers from host records, the fail-closed flows,
the MTU and the netconf and record rules. The WireGuard device is the in-memory fake of
overlay/wireguard/testing.py; the VM tier (tests/vm/test_encryption.py) runs the real one."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from overlay.agent.config import AgentConfig, ConfigError, build
from overlay.agent.encryption import Encryption
from overlay.agent.reconciler import Reconciler
from overlay.cli import wireguard as cli_wg
from overlay.cni.netconf import CniEnv, NetConf, parse_netconf
from overlay.cni.ports import HostInfo
from overlay.cni.testing import FakeHost
from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import LocalPort, RemoteEndpoint
from overlay.errors import CniError, Code
from overlay.model import container_mtu
from overlay.ovs.testing import FakeOfctl
from overlay.store import records as r
from overlay.store.stream import Change
from overlay.wireguard import keys
from overlay.wireguard.peers import NotAPeer, Peer, diff, duplicate_keys, parse_peer, wg_address
from overlay.wireguard.testing import FakeDevice

SUBNET = "100.64.0.0/16"


# --- keys -------------------------------------------------------------------------------------

def test_x25519_matches_rfc_7748() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert keys.public_of(alice).hex() == \
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert keys.x25519(alice, keys.public_of(bob)).hex() == shared
    assert keys.x25519(bob, keys.public_of(alice)).hex() == shared


def test_the_private_key_is_made_once_kept_0600_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "wireguard" / "private.key")
    first = keys.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    again = keys.load_or_create(path)  # an agent restart keeps the key
    assert again == first and again.public == keys.public_of(again.private)
    os.chmod(path, 0o644)
    keys.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.public_b64 not in open(path).read()  # the file holds the private key only


def test_a_key_file_that_is_not_a_key_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text("not a key\n")
    with pytest.raises(keys.KeyFileError, match="move it away"):
        keys.load_or_create(str(path))


@pytest.mark.parametrize("text", ["", "short", 42, None, "A" * 43 + "=",
                                  keys.encode(bytes(32)), "!" * 44])
def test_unusable_public_keys_are_recognised(text: object) -> None:
    assert keys.decode_public(text) is None


# --- peers from host records ------------------------------------------------------------------

def host_obj(name: str, vtep: str, public: str | None = None, **extra: Any) -> dict[str, Any]:
    pub = keys.KeyPair.generate().public_b64 if public is None else public
    rec = r.HostRecord(name, vtep, "system", "", pub, wg_address(SUBNET, vtep) if pub else "",
                       51820 if pub else 0)
    return {**json.loads(rec.to_json()), **extra}


def test_the_wireguard_address_is_the_subnet_plus_the_vteps_host_part() -> None:
    assert wg_address(SUBNET, "192.168.56.11") == "100.64.56.11"
    assert wg_address("100.64.0.0/24", "172.31.0.2") == "100.64.0.2"
    with pytest.raises(ValueError):
        wg_address("100.64.0.0/24", "172.31.0.0")


def test_a_usable_record_makes_a_peer_reached_at_its_verified_vtep() -> None:
    obj = host_obj("h1", "172.31.0.2")
    peer = parse_peer("h1", obj, "172.31.0.2", SUBNET)
    assert peer == Peer("h1", obj["wg_public_key"], "100.64.0.2", "172.31.0.2", 51820)


@pytest.mark.parametrize("change, why", [
    ({"wg_public_key": ""}, "publishes no WireGuard key"),
    ({"wg_public_key": "x" * 44}, "unusable WireGuard key"),
    ({"wg_address": "100.64.9.9"}, "claims WireGuard address"),
    ({"wg_address": "10.0.0.1"}, "claims WireGuard address"),
    ({"wg_port": 0}, "no usable WireGuard port"),
    ({"wg_port": True}, "no usable WireGuard port"),
])
def test_a_record_without_a_usable_key_address_or_port_makes_no_peer(
        change: dict[str, Any], why: str) -> None:
    with pytest.raises(NotAPeer, match=why):
        parse_peer("h1", host_obj("h1", "172.31.0.2", **change), "172.31.0.2", SUBNET)


def test_a_rotated_key_replaces_the_peer_and_a_gone_host_is_removed() -> None:
    a = Peer("h1", "k1", "100.64.0.2", "172.31.0.2", 51820)
    b = Peer("h2", "k2", "100.64.0.3", "172.31.0.3", 51820)
    changes = diff({"h1": a, "h2": b}, {"h1": replace(a, public_key="k1new")})
    assert changes.add == (replace(a, public_key="k1new"),)
    assert set(changes.remove) == {a, b}
    assert diff({"h1": a}, {"h1": a}).add == ()


def test_hosts_sharing_a_public_key_are_none_of_them_peers() -> None:
    a = Peer("h1", "k1", "100.64.0.2", "172.31.0.2", 51820)
    peers = {"h1": a, "h2": replace(a, host="h2"), "h3": replace(a, host="h3", public_key="k3")}
    assert duplicate_keys(peers, "mine") == {"h1", "h2"}
    assert duplicate_keys(peers, "k3") == {"h1", "h2", "h3"}  # ours, published by another


# --- the agent: peers on the device, flows fail closed ----------------------------------------

def host_change(name: str, obj: dict[str, Any] | None) -> Change:
    return Change(r.host_key(name), None if obj is None else json.dumps(obj).encode(), 1)


def endpoint(host: str, ip: str, mac: str, network: str, vni: int) -> Change:
    rec = r.EndpointRecord(network=network, container_id=f"c-{ip}", ifname="eth0", host=host,
                           vni=vni, ips=[f"{ip}/24"], mac=mac, port="ovlx", netns="/x")
    return Change(rec.key, rec.to_json().encode(), 1)


def agent_parts(tmp_path: Path) -> tuple[Encryption, FakeDevice, Reconciler, Dataplane]:
    cfg = AgentConfig(host="h0", wireguard_key_file=str(tmp_path / "private.key"))
    dev = FakeDevice(address="100.64.0.1")
    enc = Encryption(cfg=cfg, device=dev, guard_rule=lambda ifname, subnet: None)
    enc.start()
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    dp.install_endpoint("clear/mine/eth0", LocalPort(42, "02:00:00:00:00:01", ("10.0.0.1",), 5))
    dp.install_endpoint("secret/mine/eth0", LocalPort(44, "02:00:00:00:00:11", ("10.4.0.1",), 6))
    rec = Reconciler(host="h0", dataplane=dp, sealed=enc.sealed)
    enc.set_on_peer_changed(rec.peer_changed)
    rec.on_networks([
        Change(r.network_key("clear"), r.NetworkRecord("clear", 42, "10.0.0.0/24").to_json()
               .encode(), 1, 1),
        Change(r.network_key("secret"), r.NetworkRecord("secret", 44, "10.4.0.0/24", True)
               .to_json().encode(), 2, 2)])
    return enc, dev, rec, dp


def hosts(enc: Encryption, rec: Reconciler, changes: list[Change]) -> None:
    rec.on_hosts(changes)   # the agent's order (agent.py): reconciler, then encryption
    enc.on_hosts(changes)


def remote(dp: Dataplane) -> set[RemoteEndpoint]:
    return set(dp.state().remote.values())


def test_encrypted_networks_go_to_the_peers_wireguard_address_and_only_with_a_key(
        tmp_path: Path) -> None:
    enc, dev, rec, dp = agent_parts(tmp_path)
    good = host_obj("h1", "172.31.0.2")
    hosts(enc, rec, [host_change("h1", good)])
    rec.on_endpoints([endpoint("h1", "10.0.0.2", "02:00:00:00:00:02", "clear", 42),
                      endpoint("h1", "10.4.0.2", "02:00:00:00:00:12", "secret", 44)])
    assert remote(dp) == {
        RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2"),
        RemoteEndpoint(44, "02:00:00:00:00:12", ("10.4.0.2",), "100.64.0.2")}
    assert set(dev.held) == {good["wg_public_key"]}
    # The key removed from etcd: no encrypted traffic to h1 at all (never to its VTEP in
    # clear), the unencrypted network carries on, and the peer leaves the device.
    hosts(enc, rec, [host_change("h1", {**good, "wg_public_key": ""})])
    assert remote(dp) == {RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2")}
    assert dev.held == {}
    assert any("h1 publishes no WireGuard key" in p for p in enc.problems())
    # Its key back: the flows follow, after the device has the peer.
    hosts(enc, rec, [host_change("h1", good)])
    assert RemoteEndpoint(44, "02:00:00:00:00:12", ("10.4.0.2",), "100.64.0.2") in remote(dp)
    assert dev.log[-1] == "set h1" and enc.problems() == []


def test_a_peer_that_rotates_its_key_keeps_its_flows_and_swaps_its_key(tmp_path: Path) -> None:
    enc, dev, rec, dp = agent_parts(tmp_path)
    old = host_obj("h1", "172.31.0.2")
    hosts(enc, rec, [host_change("h1", old)])
    rec.on_endpoints([endpoint("h1", "10.4.0.2", "02:00:00:00:00:12", "secret", 44)])
    before = remote(dp)
    new = {**old, "wg_public_key": keys.KeyPair.generate().public_b64}
    hosts(enc, rec, [host_change("h1", new)])
    assert remote(dp) == before
    assert set(dev.held) == {new["wg_public_key"]}
    assert dev.log[-2:] == ["set h1", f"remove {old['wg_public_key'][:8]}"]  # new first


def test_a_peer_whose_device_entry_fails_gets_no_encrypted_traffic(tmp_path: Path) -> None:
    enc, dev, rec, dp = agent_parts(tmp_path)
    dev.fail_set.add("h1")
    hosts(enc, rec, [host_change("h1", host_obj("h1", "172.31.0.2"))])
    rec.on_endpoints([endpoint("h1", "10.4.0.2", "02:00:00:00:00:12", "secret", 44)])
    assert remote(dp) == set()


def test_a_host_publishing_our_key_or_anothers_is_no_peer(tmp_path: Path) -> None:
    enc, dev, rec, dp = agent_parts(tmp_path)
    ours = enc.host_record(r.HostRecord("h0", "172.31.0.1", "system")).wg_public_key
    shared = keys.KeyPair.generate().public_b64
    hosts(enc, rec, [host_change("h1", host_obj("h1", "172.31.0.2", ours)),
                     host_change("h2", host_obj("h2", "172.31.0.3", shared)),
                     host_change("h3", host_obj("h3", "172.31.0.4", shared))])
    assert dev.held == {}
    assert len(enc.problems()) == 3


def test_a_lapsed_host_record_keeps_its_peer_until_pruned(tmp_path: Path) -> None:
    enc, dev, rec, dp = agent_parts(tmp_path)
    hosts(enc, rec, [host_change("h1", host_obj("h1", "172.31.0.2"))])
    enc.on_hosts([host_change("h1", None)])  # an agent restart: its key is back soon
    assert len(dev.held) == 1
    enc.prune(set())                         # the reconciler's grace is over
    assert dev.held == {}


def test_our_record_publishes_the_public_key_and_rotation_replaces_it(tmp_path: Path) -> None:
    enc, dev, _, _ = agent_parts(tmp_path)
    rec = enc.host_record(r.HostRecord("h0", "172.31.0.1", "system", "id"))
    assert (rec.wg_address, rec.wg_port) == ("100.64.0.1", 51820)
    assert keys.decode_public(rec.wg_public_key) is not None
    assert "private" not in rec.to_json() and dev.private not in rec.to_json()
    assert dev.public_key() == rec.wg_public_key
    enc.rotate()
    rotated = enc.host_record(rec)
    assert rotated.wg_public_key != rec.wg_public_key and dev.public_key() == rotated.wg_public_key
    assert keys.load_or_create(str(tmp_path / "private.key")).public_b64 == rotated.wg_public_key


def test_a_host_that_cannot_encrypt_publishes_nothing_and_seals_nothing() -> None:
    enc = Encryption(cfg=AgentConfig(host="h0"), device=None, unavailable="netdev")
    enc.start()
    rec = r.HostRecord("h0", "172.31.0.1", "netdev")
    assert enc.host_record(rec) == rec and enc.sealed("h1") is None
    assert enc.rotate() is None


# --- MTU, netconf, records, ADD ---------------------------------------------------------------

def test_mtu_accounts_for_wireguard_unless_the_netconf_sets_it() -> None:
    assert container_mtu(None, 1500, encrypted=True) == 1390
    assert container_mtu(None, 1500, encrypted=True, ipv6_underlay=True) == 1370
    assert container_mtu(None, 1500) == 1450
    assert container_mtu(1200, 1500, encrypted=True) == 1200


def netconf(**extra: Any) -> NetConf:
    return parse_netconf(json.dumps({
        "cniVersion": "1.1.0", "name": "secret", "type": "ovs", "vxlanID": 44,
        "ipam": {"type": "overlay", "subnet": "10.4.0.0/24"}, **extra}).encode())


@pytest.mark.parametrize("value", ["true", 1, None, {}])
def test_encrypted_must_be_a_boolean(value: object) -> None:
    with pytest.raises(CniError) as info:
        netconf(encrypted=value) if value is not None else parse_netconf(b"{}")
    assert info.value.code in (Code.INVALID_NETCONF, Code.DECODING_FAILURE)
    assert netconf().encrypted is None and netconf(encrypted=False).encrypted is False


def env(container_id: str) -> CniEnv:
    return CniEnv("ADD", container_id, f"/var/run/netns/{container_id}", "eth0")


def test_add_of_an_encrypted_network_where_it_cannot_run_is_refused_and_leaves_nothing() -> None:
    host = FakeHost()  # HostInfo's default: no WireGuard
    with pytest.raises(CniError) as info:
        host.service.add(env("c0"), netconf(encrypted=True))
    assert info.value.code == Code.UNSUPPORTED_FIELD
    assert "cannot encrypt" in info.value.msg and "kernel datapath" in info.value.details
    assert not any(host.leftovers().values()), host.leftovers()
    # The agent's default counts as asking for it.
    default_on = FakeHost(info=HostInfo("host1", "br-int", 1500, "192.0.2.1",
                                        "netdev", encrypt_by_default=True))
    with pytest.raises(CniError) as info:
        default_on.service.add(env("c0"), netconf())
    assert "encrypt_networks default" in info.value.msg
    assert not any(default_on.leftovers().values())


def test_encryption_is_recorded_with_the_network_and_cannot_change() -> None:
    host = FakeHost(info=HostInfo("host1", "br-int", 1500, "192.0.2.1", ""))
    result = json.loads(host.service.add(env("c0"), netconf(encrypted=True)))
    assert host.endpoints.networks["secret"].encrypted is True
    assert host.endpoints.records[("secret", "c0", "eth0")].mtu == 1390  # 1500 - 50 - 60
    assert result["interfaces"][1]["mtu"] == 1390
    with pytest.raises(CniError) as info:
        host.service.add(env("c1"), netconf(encrypted=False))
    assert info.value.code == Code.NETWORK_CONFLICT
    assert "is encrypted and stays so" in info.value.msg
    assert ("secret", "c1", "eth0") not in host.endpoints.records


def test_network_records_conflict_on_encryption_only_when_it_differs() -> None:
    plain = r.NetworkRecord("n", 42, "10.0.0.0/24")
    assert r.network_conflict(plain, plain) == ""
    assert "not encrypted and stays so" in r.network_conflict(plain, replace(plain, encrypted=True))
    assert r.NetworkRecord.from_json('{"name": "n", "vni": 42, "subnet": ""}').encrypted is False


def test_agent_config_reads_the_encryption_settings(tmp_path: Path) -> None:
    cfg = build(None, {"encrypt_networks": "true", "wireguard_port": "51900"})
    assert cfg.encrypt_networks is True and cfg.wireguard_port == 51900
    toml = tmp_path / "agent.toml"
    toml.write_text('encrypt_networks = true\nwireguard_subnet = "100.65.0.0/16"\n')
    assert build(str(toml), {}).wireguard_subnet == "100.65.0.0/16"
    for bad in ({"encrypt_networks": "maybe"}, {"wireguard_subnet": "fd00::/64"},
                {"wireguard_port": "0"}, {"wireguard_key_file": "relative.key"}):
        with pytest.raises(ConfigError):
            build(None, bad)


def test_doctor_names_the_hosts_that_cannot_carry_an_encrypted_network() -> None:
    state = {r.host_key("h0"): r.HostRecord("h0", "172.31.0.1", "netdev").to_json().encode(),
             r.host_key("h1"): json.dumps(host_obj("h1", "172.31.0.2")).encode()}
    assert cli_wg.cluster_problems(state) == []  # no encrypted network: nothing to say
    state[r.network_key("secret")] = r.NetworkRecord("secret", 44, "", True).to_json().encode()
    problems = cli_wg.cluster_problems(state)
    assert len(problems) == 1 and "host h0" in problems[0] and "netdev" in problems[0]


def test_hosts_listing_shows_fingerprints_and_handshakes() -> None:
    public = keys.KeyPair.generate().public_b64
    rows: list[dict[str, Any]] = [{"host": "h1", "wg_public_key": public}, {"host": "h2"}]
    cli_wg.add_key_columns(rows, {public: 0.0})
    assert rows[0]["key"] == keys.fingerprint(public) and rows[0]["handshake"] == "never"
    assert rows[1]["key"] == "-" and rows[1]["handshake"] == "-"


def test_trace_says_when_a_packet_is_encrypted() -> None:
    from overlay.cli import trace_walk as walk
    from overlay.cli.trace import Cluster, Hop, build
    from overlay.cli.trace_explain import explain

    state = {
        r.host_key("h0"): r.HostRecord("h0", "172.31.0.1", "system", "", "k0", "100.64.0.1",
                                       51820).to_json().encode(),
        r.host_key("h1"): r.HostRecord("h1", "172.31.0.2", "system", "", "k1", "100.64.0.2",
                                       51820).to_json().encode(),
        r.network_key("secret"): r.NetworkRecord("secret", 44, "10.4.0.0/24", True).to_json()
        .encode()}
    for cid, host_name, ip in (("a", "h0", "10.4.0.2"), ("b", "h1", "10.4.0.3")):
        rec = r.EndpointRecord(network="secret", container_id=cid, ifname="eth0",
                               host=host_name, vni=44, ips=[f"{ip}/24"],
                               mac=f"0a:58:0a:04:00:0{ip[-1]}", port=f"p-{cid}", netns="/x")
        state[rec.key] = rec.to_json().encode()
    cluster = Cluster.from_state(state)
    assert cluster.encrypted == {"secret"} and cluster.host_of_vtep("100.64.0.2") == "h1"
    req = build(cluster, "a", "b")
    hop = Hop("h0", "", [], walk.Verdict("tunneled", 20, "forward", vtep="100.64.0.2", vni=44))
    explain(hop, req, cluster, {}, arriving=False)
    assert hop.summary.startswith("encrypted: tunneled with VNI 44 to WireGuard address "
                                  "100.64.0.2, sent inside WireGuard to host h1 (VTEP 172.31.0.2)")
    assert hop.continue_on == "h1"


def test_rotate_key_tries_again_when_etcd_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VM tier saw one TLS connection attempt fail ("Handshaker shutdown"): pyetcd's own
    error must be tried again by overlayctl's patience, not end in a traceback."""
    from overlay.cli import overlayctl

    class Client:
        def __init__(self) -> None:
            self.puts: list[tuple[str, str]] = []

        def put(self, key: str, value: str) -> None:
            if not self.puts:
                self.puts.append(("failed", ""))
                raise ConnectionError("etcd connection failed")
            self.puts.append((key, value))

    class Store:
        client = Client()

        def tls_rejection(self) -> None:
            return None

        def close(self) -> None:
            pass

    store = Store()
    monkeypatch.setattr(overlayctl, "_store", lambda etcd, tls: store)
    monkeypatch.setattr(overlayctl.time, "sleep", lambda s: None)
    assert overlayctl.main(["hosts", "rotate-key", "node1"]) == 0
    assert store.client.puts[-1][0] == r.rotation_key("node1")
    assert overlayctl.main(["hosts", "rotate-key"]) == 2


def test_a_record_cannot_turn_an_encrypted_network_to_clear_text(tmp_path: Path) -> None:
    """Any host may write network records: a stray or hostile "encrypted": false must not send
    the network's VXLAN in clear, nor admit it from VTEPs (agent/encryption_pins.py)."""
    enc, dev, rec, dp = agent_parts(tmp_path)
    rejected: list[tuple[str, str]] = []
    rec._on_reject = lambda kind, reason: rejected.append((kind, reason))
    hosts(enc, rec, [host_change("h1", host_obj("h1", "172.31.0.2"))])
    rec.on_endpoints([endpoint("h1", "10.4.0.2", "02:00:00:00:00:12", "secret", 44)])
    sealed = {RemoteEndpoint(44, "02:00:00:00:00:12", ("10.4.0.2",), "100.64.0.2")}
    assert remote(dp) == sealed
    downgrade = r.NetworkRecord("secret", 44, "10.4.0.0/24", False)
    rec.on_networks([Change(r.network_key("secret"), downgrade.to_json().encode(), 2, 3)])
    assert remote(dp) == sealed  # still to the WireGuard address, never to 172.31.0.2
    assert rejected == [("network", "encryption_downgrade")]
    assert any("encryption_downgrade" in p and "stays encrypted here" in p for p in rec.problems())
    # The key withdrawn meanwhile: nothing at all to h1, as for any encrypted network.
    hosts(enc, rec, [host_change("h1", {**host_obj("h1", "172.31.0.2"), "wg_public_key": ""})])
    assert remote(dp) == set()


def test_after_a_restart_the_ports_pin_encryption_before_any_record_is_read(
        tmp_path: Path) -> None:
    """An agent restarted after the forged record was written learns the truth from its own
    ports' external_ids (what ADD recorded), not from the record."""
    cfg = AgentConfig(host="h0", wireguard_key_file=str(tmp_path / "private.key"))
    enc = Encryption(cfg=cfg, device=FakeDevice(address="100.64.0.1"),
                     guard_rule=lambda ifname, subnet: None)
    enc.start()
    dp = Dataplane(ofctl=cast(Any, FakeOfctl()), bridge="br-int", tunnel_ofport=1)
    rec = Reconciler(host="h0", dataplane=dp, sealed=enc.sealed, encrypted_networks={"secret"})
    enc.set_on_peer_changed(rec.peer_changed)
    rec.on_networks([Change(r.network_key("secret"), r.NetworkRecord(
        "secret", 44, "10.4.0.0/24", False).to_json().encode(), 2, 2)])
    hosts(enc, rec, [host_change("h1", host_obj("h1", "172.31.0.2"))])
    rec.on_endpoints([endpoint("h1", "10.4.0.2", "02:00:00:00:00:12", "secret", 44)])
    assert remote(dp) == {RemoteEndpoint(44, "02:00:00:00:00:12", ("10.4.0.2",), "100.64.0.2")}
    # A network that was never encrypted here follows its record as before.
    rec.on_networks([Change(r.network_key("clear"), r.NetworkRecord(
        "clear", 42, "10.0.0.0/24").to_json().encode(), 3, 3)])
    rec.on_endpoints([endpoint("h1", "10.0.0.2", "02:00:00:00:00:02", "clear", 42)])
    assert RemoteEndpoint(42, "02:00:00:00:00:02", ("10.0.0.2",), "172.31.0.2") in remote(dp)
