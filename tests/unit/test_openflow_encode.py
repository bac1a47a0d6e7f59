"""The OpenFlow channel's shortcut for the ARP responder encodes what the general path does."""

from __future__ import annotations

from overlay.dataplane.flows import (
    LocalPort,
    RemoteEndpoint,
    actions_text,
    local_port_flows,
    remote_endpoint_flows,
)
from overlay.ovs.openflow import encode_actions_generic, encode_instructions


def test_arp_responder_template_matches_the_general_encoder() -> None:
    flows = [*remote_endpoint_flows(RemoteEndpoint(42, "0a:58:0a:80:01:ff", ("10.128.1.255",),
                                                   "172.31.0.9"), 1),
             *local_port_flows(LocalPort(7, "0e:6f:76:00:00:07", ("192.168.0.1", "fd00::1"), 3))]
    arp = [actions_text(f.actions) for f in flows if f.identity.startswith("table=10,priority=100")]
    assert len(arp) == 2
    for text in arp:
        assert encode_instructions(text) == encode_actions_generic(text)
    for text in [actions_text(f.actions) for f in flows]:  # everything else: the general path
        assert encode_instructions(text) == encode_actions_generic(text)
