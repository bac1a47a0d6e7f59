"""The OpenFlow encoder's shortcuts (the ARP responder's template, what a bundle's Encoder
remembers) encode what the general path does."""

from __future__ import annotations

import struct

import pytest

from overlay.dataplane.flows import (
    DesiredState,
    Gateway,
    LocalPort,
    RemoteEndpoint,
    base_flows,
    gateway_flows,
    local_port_flows,
    network_flows,
    remote_endpoint_flows,
)
from overlay.dataplane.flowtable import FlowTable, Owner
from overlay.ovs.flow import (
    UDP,
    ArpReply,
    Identity,
    Load,
    Match,
    Output,
    SetField,
    match,
)
from overlay.ovs.ofencode import (
    ANY,
    COMMANDS,
    FLOW_MOD,
    NO_BUFFER,
    VERSION,
    Encoder,
    Unsupported,
    encode_actions_generic,
    encode_instructions,
    encode_match,
)


def test_arp_responder_template_matches_the_general_encoder() -> None:
    flows = [*remote_endpoint_flows(RemoteEndpoint(42, "0a:58:0a:80:01:ff", ("10.128.1.255",),
                                                   "172.31.0.9"), 1),
             *local_port_flows(LocalPort(7, "0e:6f:76:00:00:07", ("192.168.0.1", "fd00::1"), 3))]
    arp = [f.actions for f in flows if f.table == 10 and f.priority == 100]
    assert len(arp) == 2 and all(isinstance(a[0], ArpReply) for a in arp)
    for actions in [f.actions for f in flows]:  # the template and the general path
        assert encode_instructions(actions) == encode_actions_generic(actions)
        assert encode_instructions(actions) == \
            encode_actions_generic(tuple(p for a in actions for p in (
                a.expand() if isinstance(a, ArpReply) else (a,))))


def _reference(kind: str, identity: Identity, actions: tuple[object, ...], cookie: int,
               xid: int) -> bytes:
    """A flow mod encoded field by field, nothing remembered, ARP replies expanded."""
    table, priority, m = identity.table, identity.priority, identity.match
    body = struct.pack("!QQBBHHHIIIHH", cookie if kind == "add" else 0, 0, table,
                       COMMANDS[kind], 0, 0, priority, NO_BUFFER, ANY, ANY, 0, 0)
    match = encode_match(m)
    expanded = tuple(p for a in actions for p in (a.expand() if isinstance(a, ArpReply) else (a,)))
    instructions = b"" if kind == "delete_strict" else encode_actions_generic(expanded)  # type: ignore[arg-type]
    return struct.pack("!BBHI", VERSION, FLOW_MOD, 8 + len(body) + len(match) + len(instructions),
                       xid) + body + match + instructions


def test_a_bundle_encoder_says_what_the_token_by_token_path_says() -> None:
    """The Encoder remembers stems, tokens and actions across the rules of a bundle, and
    takes the ARP responder in its short form: every rule of a varied table, in every kind
    of operation, comes out as the plain path encodes it."""
    remote = {f"r{i}": RemoteEndpoint(42 + i % 2, f"0a:58:0a:01:00:{i:02x}", (f"10.1.0.{i}",),
                                      f"172.30.0.{i % 3 + 1}") for i in range(1, 40)}
    state = DesiredState(
        tunnel_ofport=1, generation=3, remote=remote,
        local={"a": LocalPort(42, "0a:58:0a:00:00:01", ("10.0.0.1", "fd00::1"), 5),
               "d": LocalPort(43, "0a:d4:00:00:00:05", ("10.0.0.5",), 8, True),
               "e": LocalPort(42, "0a:d4:00:00:00:06", (), 9, True)},
        gateways={42: Gateway(42, "0e:6f:76:00:00:2a", "10.0.0.254", 11)})
    table = FlowTable()
    table.set(Owner.BASE, base_flows())
    for key, port in state.local.items():
        table.set(Owner.local(key), local_port_flows(port))
    for key, e in state.remote.items():
        table.set(Owner.remote(key), remote_endpoint_flows(e, 1))
    for vni in (42, 43):
        table.set(Owner.network(vni), network_flows(vni, [5, 9], ["172.30.0.1", "172.30.0.2"], 1))
    table.set(Owner.gateway(42), gateway_flows(state.gateways[42]))
    rules = table.flows()
    assert any(isinstance(a[0], ArpReply) for a in rules.values() if a)
    for kind in ("add", "modify_strict", "delete_strict"):
        encoder = Encoder(0x1234)
        for xid, (identity, actions) in enumerate(rules.items()):
            assert encoder.flow_mod(kind, identity, actions, xid) == \
                _reference(kind, identity, actions, 0x1234, xid), (kind, identity)


def test_what_the_encoder_cannot_say_is_unsupported() -> None:
    encoder = Encoder(1)
    with pytest.raises(Unsupported):  # a field the encoder has no OXM for
        encoder.flow_mod("add", Identity(20, 90, Match(("ct_mark", 1))), (), 1)
    with pytest.raises(Unsupported):  # a conntrack flag OVS does not have
        encoder.flow_mod("add", Identity(20, 90, match(ct_state="+trk+bogus")), (), 1)
    with pytest.raises(Unsupported):  # an action it cannot say
        encoder.flow_mod("add", Identity(20, 90, match()), (SetField("ct_mark", 1),), 2)
    with pytest.raises(Unsupported):
        encoder.flow_mod("add", Identity(20, 90, match()), (Load("reg7", 1),), 2)
    with pytest.raises(Unsupported):  # a malformed MAC, in the ARP template and in a match
        encoder.flow_mod("add", Identity(10, 100, match()), (ArpReply("0a:58", "10.0.0.1"),), 3)
    with pytest.raises(Unsupported):
        encoder.flow_mod("add", Identity(20, 100, match(reg0=1, eth_dst="0a:58:zz")), (), 4)
    with pytest.raises(Unsupported):  # ports of TCP: only UDP's are in the vocabulary
        encoder.flow_mod("add", Identity(0, 100, match(eth_type=0x0800, ip_proto=6, tp_dst=80)),
                         (Output(1),), 5)
    assert encoder.flow_mod("add", Identity(0, 100, match(**UDP, tp_dst=80)), (Output(1),), 6)
