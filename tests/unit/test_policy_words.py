"""The policy words of the flow vocabulary: text as ovs-ofctl reads it, and the encoder's
refusals (tests/integration/test_openflow_policy_words.py checks the bytes against a switch)."""

from __future__ import annotations

import pytest

from overlay.ovs.flow import IP, Conjunction, Ct, GotoTable, Load, flow, match
from overlay.ovs.flowtext import actions_text, match_text
from overlay.ovs.ofencode import Encoder, Unsupported, encode_actions_generic, encode_match
from overlay.ovs.oxm import ct_state_bits


def test_text_of_the_policy_words() -> None:
    assert match_text(match(conj_id=7)) == "conj_id=7"
    assert match_text(match(reg0=1, ct_state="+trk+est-inv", eth_type=0x0800, ip_proto=6,
                            ipv4_src="10.0.0.0/8", tcp_dst="0x50/0xfff0")) == \
        "reg0=1,ct_state=+trk+est-inv,tcp,nw_src=10.0.0.0/8,tcp_dst=0x50/0xfff0"
    assert match_text(match(eth_type=0x0800, ip_proto=132, sctp_dst=9)) == "sctp,sctp_dst=9"
    assert actions_text((Load("reg0", 5), Ct(zone=9, table=12))) == \
        "load:5->NXM_NX_REG0[],ct(zone=9,table=12)"
    assert actions_text((Ct(zone=9, commit=True), GotoTable(20))) == \
        "ct(commit,zone=9),goto_table:20"
    assert actions_text((Conjunction(3, 2, 3),)) == "conjunction(3,2/3)"


def test_ct_state_flags() -> None:
    assert ct_state_bits("+trk+est-inv") == (0x22, 0x32)
    assert ct_state_bits("-new") == (0, 1)
    for bad in ("", "trk", "+trk+bogus", "+trk,est"):
        with pytest.raises(ValueError):
            ct_state_bits(bad)


def test_masked_ports_and_prefixes_encode_with_their_masks() -> None:
    exact = encode_match(match(eth_type=0x0800, ip_proto=6, tcp_dst=80))
    full_mask = encode_match(match(eth_type=0x0800, ip_proto=6, tcp_dst="0x50/0xffff"))
    assert exact == full_mask  # a full mask is no mask: the switch reports it so
    masked = encode_match(match(eth_type=0x0800, ip_proto=6, tcp_dst="0x50/0xfff0"))
    assert bytes.fromhex("80001d040050fff0") in masked  # TCP_DST, has-mask, value, mask
    host = encode_match(match(**IP, ipv4_dst="10.0.0.1/32"))
    assert host == encode_match(match(**IP, ipv4_dst="10.0.0.1"))
    assert bytes.fromhex("80001908" "0a000000" "ffffff00") in \
        encode_match(match(**IP, ipv4_dst="10.0.0.0/24"))


def test_conjunction_and_ct_encode_as_nicira_actions() -> None:
    ct = encode_actions_generic((Ct(zone=3, table=12),))
    # apply_actions, then NXAST_CT (35): no flags, immediate zone 3, recirculate to 12.
    assert ct[8:] == bytes.fromhex("ffff001800002320" "0023" "0000" "00000000" "0003" "0c"
                                   "000000" "0000")
    commit = encode_actions_generic((Ct(zone=3, commit=True),))
    assert commit[8 + 10:8 + 12] == b"\x00\x01" and commit[8 + 18] == 0xFF  # commit, no table
    conj = encode_actions_generic((Conjunction(5, 2, 3),))
    assert conj[8:] == bytes.fromhex("ffff001000002320" "0022" "01" "03" "00000005")
    for bad in (Conjunction(5, 0, 3), Conjunction(5, 4, 3), Conjunction(5, 1, 1)):
        with pytest.raises(Unsupported):
            encode_actions_generic((bad,))


def test_a_bundle_encoder_says_the_policy_words_as_the_reference_does() -> None:
    rules = [flow(12, 900, match(reg0=42, **IP, ipv4_src=f"10.0.0.{i}"), (Conjunction(7, 1, 2),))
             for i in range(1, 4)]
    rules.append(flow(12, 900, match(conj_id=7), (GotoTable(13),)))
    encoder = Encoder(1)
    for rule in rules:
        mod = encoder.flow_mod("add", rule.identity, rule.actions, 1)
        assert encode_match(rule.match) in mod
        assert mod.endswith(encode_actions_generic(rule.actions))
